#include "gateways/wechatpay/xml.hpp"

#include "core/error.hpp"

#include <expat.h>

#include <memory>

namespace paybridge::gateways::wechatpay {
namespace {

struct ParserFree {
    void operator()(XML_ParserStruct* p) const noexcept { XML_ParserFree(p); }
};
using ParserPtr = std::unique_ptr<XML_ParserStruct, ParserFree>;

struct Context {
    XML_Parser parser{nullptr};
    std::string_view root;
    XmlFields fields;
    int depth{0};
    std::string name;  // the child element being read
    std::string text;
    const char* why{nullptr};  // set once: everything after the first rejection is ignored
};

Context& ctx_of(void* user) { return *static_cast<Context*>(user); }

void reject(Context& c, const char* why)
{
    if (c.why == nullptr) {
        c.why = why;
        // Non-resumable: expat returns XML_ERROR_ABORTED as soon as this handler returns, before
        // it reads the next token (e.g. the entity declarations of an internal DTD subset).
        XML_StopParser(c.parser, XML_FALSE);
    }
}

bool blank(const XML_Char* s, int len)
{
    for (int i = 0; i < len; ++i) {
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r') {
            return false;
        }
    }
    return true;
}

void XMLCALL on_start(void* user, const XML_Char* name, const XML_Char** attributes)
{
    Context& c = ctx_of(user);
    if (c.why != nullptr) {
        return;
    }
    if (attributes != nullptr && attributes[0] != nullptr) {
        reject(c, "attribute");
        return;
    }
    if (c.depth == 0) {
        if (c.root != name) {
            reject(c, "unexpected root element");
            return;
        }
    } else if (c.depth == 1) {
        c.name = name;
        c.text.clear();
    } else {
        reject(c, "nested element");
        return;
    }
    ++c.depth;
}

void XMLCALL on_end(void* user, const XML_Char* /*name*/)
{
    Context& c = ctx_of(user);
    if (c.why != nullptr) {
        return;
    }
    --c.depth;
    if (c.depth != 1) {
        return;
    }
    if (c.fields.size() >= kMaxXmlFields) {
        reject(c, "too many elements");
        return;
    }
    if (!c.fields.emplace(std::move(c.name), std::move(c.text)).second) {
        reject(c, "duplicate element");
    }
    c.name.clear();
    c.text.clear();
}

void XMLCALL on_text(void* user, const XML_Char* s, int len)
{
    Context& c = ctx_of(user);
    if (c.why != nullptr) {
        return;
    }
    if (c.depth == 2) {
        c.text.append(s, static_cast<std::size_t>(len));
    } else if (!blank(s, len)) {
        reject(c, "text outside elements");
    }
}

void XMLCALL on_doctype(void* user, const XML_Char*, const XML_Char*, const XML_Char*, int)
{
    reject(ctx_of(user), "doctype");
}

void XMLCALL on_entity_decl(void* user, const XML_Char*, int, const XML_Char*, int, const XML_Char*,
                            const XML_Char*, const XML_Char*, const XML_Char*)
{
    reject(ctx_of(user), "entity declaration");
}

void XMLCALL on_notation_decl(void* user, const XML_Char*, const XML_Char*, const XML_Char*, const XML_Char*)
{
    reject(ctx_of(user), "notation declaration");
}

void XMLCALL on_skipped_entity(void* user, const XML_Char*, int)
{
    reject(ctx_of(user), "entity reference");
}

void XMLCALL on_processing_instruction(void* user, const XML_Char*, const XML_Char*)
{
    reject(ctx_of(user), "processing instruction");
}

int XMLCALL on_external_entity(XML_Parser parser, const XML_Char*, const XML_Char*, const XML_Char*,
                               const XML_Char*)
{
    // The handler argument is the parser (not user data) unless set otherwise: never load.
    reject(ctx_of(XML_GetUserData(parser)), "external entity");
    return XML_STATUS_ERROR;
}

Result<XmlFields> fail(std::string* why, std::string_view reason)
{
    if (why != nullptr) {
        *why = reason;
    }
    return make_error_code(errc::malformed_request);
}

}  // namespace

Result<XmlFields> parse_flat_xml(std::string_view doc, std::string_view root_name, std::string* why)
{
    if (doc.empty()) {
        return fail(why, "empty document");
    }
    if (doc.size() > kMaxXmlBytes) {
        return fail(why, "document too large");
    }
    // Forcing the encoding keeps UTF-16/Latin-1 declarations from changing how bytes are read.
    ParserPtr parser(XML_ParserCreate("UTF-8"));
    if (!parser) {
        return fail(why, "out of memory");
    }
    Context c;
    c.parser = parser.get();
    c.root = root_name;
    XML_SetUserData(parser.get(), &c);
    XML_SetElementHandler(parser.get(), on_start, on_end);
    XML_SetCharacterDataHandler(parser.get(), on_text);
    XML_SetStartDoctypeDeclHandler(parser.get(), on_doctype);
    XML_SetEntityDeclHandler(parser.get(), on_entity_decl);
    XML_SetNotationDeclHandler(parser.get(), on_notation_decl);
    XML_SetSkippedEntityHandler(parser.get(), on_skipped_entity);
    XML_SetProcessingInstructionHandler(parser.get(), on_processing_instruction);
    XML_SetExternalEntityRefHandler(parser.get(), on_external_entity);
    XML_SetParamEntityParsing(parser.get(), XML_PARAM_ENTITY_PARSING_NEVER);

    const XML_Status status = XML_Parse(parser.get(), doc.data(), static_cast<int>(doc.size()), XML_TRUE);
    if (c.why != nullptr) {
        return fail(why, c.why);
    }
    if (status != XML_STATUS_OK) {
        return fail(why, XML_ErrorString(XML_GetErrorCode(parser.get())));
    }
    if (why != nullptr) {
        why->clear();
    }
    return std::move(c.fields);
}

const std::string* find_field(const XmlFields& fields, std::string_view name) noexcept
{
    const auto it = fields.find(name);
    return it == fields.end() ? nullptr : &it->second;
}

std::string build_flat_xml(std::string_view root_name, const std::vector<XmlField>& fields)
{
    std::string out;
    out.reserve(64 + fields.size() * 48);
    out.append("<").append(root_name).append(">");
    for (const auto& f : fields) {
        out.append("<").append(f.name).append(">");
        if (f.cdata) {
            out.append("<![CDATA[");
            std::string_view rest = f.value;
            for (auto pos = rest.find("]]>"); pos != std::string_view::npos; pos = rest.find("]]>")) {
                // "]]" ends this section, ">" starts the next: the parser joins them back.
                out.append(rest.substr(0, pos + 2)).append("]]><![CDATA[");
                rest.remove_prefix(pos + 2);
            }
            out.append(rest).append("]]>");
        } else {
            for (char ch : f.value) {
                switch (ch) {
                    case '&': out.append("&amp;"); break;
                    case '<': out.append("&lt;"); break;
                    case '>': out.append("&gt;"); break;
                    default: out.push_back(ch);
                }
            }
        }
        out.append("</").append(f.name).append(">");
    }
    out.append("</").append(root_name).append(">");
    return out;
}

}  // namespace paybridge::gateways::wechatpay
