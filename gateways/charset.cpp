#include "gateways/charset.hpp"

#include "core/error.hpp"
#include "gateways/gateway.hpp"

#include <iconv.h>
#include <rapidjson/encodings.h>
#include <rapidjson/memorystream.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace paybridge::gateways {
namespace {

// iconv descriptors carry conversion state, so they cannot be shared between threads; opening one
// per call costs a gconv lookup. Each thread keeps one descriptor per conversion it has used.
enum class Conversion {
    gbk_to_utf8,
    gb18030_to_utf8,
    utf8_to_gbk,
    utf8_to_gb2312,
    utf8_to_gb18030,
    count,
};

struct ConversionSpec {
    const char* to;
    const char* from;
};

constexpr std::array<ConversionSpec, static_cast<std::size_t>(Conversion::count)> kConversions{{
    {"UTF-8", "GBK"},
    {"UTF-8", "GB18030"},
    {"GBK", "UTF-8"},
    {"GB2312", "UTF-8"},
    {"GB18030", "UTF-8"},
}};

class IconvCache {
public:
    IconvCache() { descriptors_.fill(invalid()); }
    ~IconvCache()
    {
        for (iconv_t cd : descriptors_) {
            if (cd != invalid()) {
                iconv_close(cd);
            }
        }
    }
    IconvCache(const IconvCache&) = delete;
    IconvCache& operator=(const IconvCache&) = delete;

    iconv_t get(Conversion c)
    {
        iconv_t& cd = descriptors_[static_cast<std::size_t>(c)];
        if (cd == invalid()) {
            const ConversionSpec& spec = kConversions[static_cast<std::size_t>(c)];
            cd = iconv_open(spec.to, spec.from);
            if (cd == invalid()) {
                // Every glibc ships these converters; missing ones mean a broken installation.
                throw std::runtime_error(std::string("iconv_open failed for ") + spec.from + " -> " + spec.to);
            }
        }
        // Back to the initial shift state: a previous call may have stopped mid-sequence.
        iconv(cd, nullptr, nullptr, nullptr, nullptr);
        return cd;
    }

private:
    static iconv_t invalid() noexcept { return reinterpret_cast<iconv_t>(-1); }
    std::array<iconv_t, static_cast<std::size_t>(Conversion::count)> descriptors_{};
};

// Runs one whole conversion. When `out` is null the output is produced into a scratch buffer
// and dropped (validation only). False on any invalid or incomplete input sequence.
bool convert(Conversion c, std::string_view in, std::string* out)
{
    thread_local IconvCache cache;
    iconv_t cd = cache.get(c);
    // iconv's input pointer is char* for historical reasons; it does not write through it.
    char* in_ptr = const_cast<char*>(in.data());
    std::size_t in_left = in.size();
    std::array<char, 4096> buffer;
    if (out != nullptr) {
        out->clear();
        out->reserve(in.size() * 3 / 2);
    }
    for (;;) {
        char* out_ptr = buffer.data();
        std::size_t out_left = buffer.size();
        // Once the input is consumed, one more call with null input flushes a final shift sequence.
        const bool flushing = in_left == 0;
        const std::size_t rc = flushing ? iconv(cd, nullptr, nullptr, &out_ptr, &out_left)
                                        : iconv(cd, &in_ptr, &in_left, &out_ptr, &out_left);
        const int err = errno;
        if (out != nullptr) {
            out->append(buffer.data(), static_cast<std::size_t>(out_ptr - buffer.data()));
        }
        if (rc == static_cast<std::size_t>(-1)) {
            if (err == E2BIG) {
                continue;  // the scratch buffer is full; it was drained above
            }
            return false;  // EILSEQ (invalid sequence) or EINVAL (sequence truncated at the end)
        }
        if (flushing) {
            return true;
        }
    }
}

Result<std::string> run(Conversion c, std::string_view in)
{
    std::string out;
    if (!convert(c, in, &out)) {
        return make_error_code(errc::malformed_request);
    }
    return out;
}

// RapidJSON's UTF-8 validator (a table-driven DFA, in-line, no iconv call per field) rejects what
// strict UTF-8 forbids: overlongs, surrogates, code points above U+10FFFF, truncated sequences.
bool valid_utf8(std::string_view in) noexcept
{
    struct Discard {
        void Put(char) noexcept {}
    };
    Discard os;
    const std::size_t n = in.size();
    std::size_t i = 0;
    while (i < n) {
        // Runs of ASCII (most of a notification), eight bytes at a time; each other code point
        // goes through the validator.
        std::uint64_t word = 0;
        while (i + 8 <= n && (std::memcpy(&word, in.data() + i, 8), (word & 0x8080808080808080ULL) == 0)) {
            i += 8;
        }
        while (i < n && static_cast<unsigned char>(in[i]) < 0x80) {
            ++i;
        }
        if (i == n) {
            break;
        }
        rapidjson::MemoryStream is(in.data() + i, n - i);
        if (!rapidjson::UTF8<char>::Validate(is, os)) {
            return false;
        }
        i += is.Tell();
    }
    return true;
}

Result<std::string> checked_utf8(std::string_view in)
{
    if (!valid_utf8(in)) {
        return make_error_code(errc::malformed_request);
    }
    return std::string(in);
}

}  // namespace

std::optional<Charset> parse_charset(std::string_view label) noexcept
{
    for (Charset c : {Charset::utf8, Charset::gbk, Charset::gb2312, Charset::gb18030}) {
        if (ascii_iequals(label, to_string(c))) {
            return c;
        }
    }
    return std::nullopt;
}

std::string_view to_string(Charset charset) noexcept
{
    switch (charset) {
    case Charset::utf8:
        return "utf-8";
    case Charset::gbk:
        return "gbk";
    case Charset::gb2312:
        return "gb2312";
    case Charset::gb18030:
        return "gb18030";
    }
    return "utf-8";
}

Result<std::string> to_utf8(std::string_view bytes, Charset charset)
{
    switch (charset) {
    case Charset::utf8:
        return checked_utf8(bytes);
    case Charset::gbk:
    case Charset::gb2312:
        // GB2312 (EUC-CN) byte pairs are identical in GBK, and senders labelled gb2312 routinely
        // use GBK-only characters (rare surnames), so decoding as GBK accepts strictly more.
        return run(Conversion::gbk_to_utf8, bytes);
    case Charset::gb18030:
        return run(Conversion::gb18030_to_utf8, bytes);
    }
    return make_error_code(errc::malformed_request);
}

Result<std::string> to_utf8(std::string_view bytes, std::string_view charset)
{
    const auto parsed = parse_charset(charset);
    if (!parsed) {
        return make_error_code(errc::malformed_request);
    }
    return to_utf8(bytes, *parsed);
}

Result<std::string> from_utf8(std::string_view utf8, Charset charset)
{
    switch (charset) {
    case Charset::utf8:
        return checked_utf8(utf8);
    case Charset::gbk:
        return run(Conversion::utf8_to_gbk, utf8);
    case Charset::gb2312:
        return run(Conversion::utf8_to_gb2312, utf8);
    case Charset::gb18030:
        return run(Conversion::utf8_to_gb18030, utf8);
    }
    return make_error_code(errc::malformed_request);
}

Result<std::string> from_utf8(std::string_view utf8, std::string_view charset)
{
    const auto parsed = parse_charset(charset);
    if (!parsed) {
        return make_error_code(errc::malformed_request);
    }
    return from_utf8(utf8, *parsed);
}

std::vector<std::string> missing_decoders()
{
    std::vector<std::string> missing;
    for (const Conversion c : {Conversion::gbk_to_utf8, Conversion::gb18030_to_utf8}) {
        const ConversionSpec& spec = kConversions[static_cast<std::size_t>(c)];
        const iconv_t cd = iconv_open(spec.to, spec.from);
        if (cd == reinterpret_cast<iconv_t>(-1)) {
            missing.push_back(std::string("this system has no iconv converter from ") + spec.from + " to " + spec.to +
                              " (glibc's gconv modules): notifications in that charset could not be decoded");
        } else {
            iconv_close(cd);
        }
    }
    return missing;
}

}  // namespace paybridge::gateways
