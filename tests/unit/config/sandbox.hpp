#pragma once

// A temporary folder for one test: configuration files, key files and secrets are written into it
// and it is removed with everything in it at the end of the test.

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace paybridge::config::test {

class Sandbox {
public:
    Sandbox()
    {
        std::string pattern = (std::filesystem::temp_directory_path() / "paybridge-config-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        dir_ = pattern;
    }
    ~Sandbox()
    {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    Sandbox(const Sandbox&) = delete;
    Sandbox& operator=(const Sandbox&) = delete;

    const std::filesystem::path& dir() const noexcept { return dir_; }

    /// Writes `content` to `relative` (parent folders created), mode 0644 whatever the umask (the
    /// loader warns about files others may change); returns the absolute path.
    std::filesystem::path write(const std::string& relative, std::string_view content) const
    {
        const std::filesystem::path path = dir_ / relative;
        std::filesystem::create_directories(path.parent_path());
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(content.data(), static_cast<std::streamsize>(content.size()));
        out.close();
        REQUIRE(out.good());
        using P = std::filesystem::perms;
        std::filesystem::permissions(path, P::owner_read | P::owner_write | P::group_read | P::others_read);
        return path;
    }

private:
    std::filesystem::path dir_;
};

}  // namespace paybridge::config::test
