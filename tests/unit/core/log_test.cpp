// core/log: the journald priority prefix, and when it is used.
#include "core/log.hpp"

#include <doctest/doctest.h>
#include <sys/stat.h>

#include <cstdio>
#include <string>

using namespace paybridge;

TEST_CASE("log lines for the journal start with the sd-daemon priority of their level")
{
    CHECK(log::priority_prefix(log::Level::error) == "<3>");
    CHECK(log::priority_prefix(log::Level::warning) == "<4>");
    CHECK(log::priority_prefix(log::Level::info) == "<6>");
    CHECK(log::priority_prefix(log::Level::debug) == "<7>");
}

TEST_CASE("stderr is the journal only when JOURNAL_STREAM names that very file")
{
    std::FILE* f = std::tmpfile();
    REQUIRE(f != nullptr);
    const int fd = fileno(f);
    struct stat st {};
    REQUIRE(::fstat(fd, &st) == 0);
    const std::string dev = std::to_string(static_cast<unsigned long long>(st.st_dev));
    const std::string ino = std::to_string(static_cast<unsigned long long>(st.st_ino));

    CHECK(log::is_journal_stream(fd, (dev + ":" + ino).c_str()));
    // Inherited by a child whose stderr went elsewhere: another inode, another device.
    CHECK_FALSE(log::is_journal_stream(fd, (dev + ":" + std::to_string(st.st_ino + 1)).c_str()));
    CHECK_FALSE(log::is_journal_stream(fd, (std::to_string(st.st_dev + 1) + ":" + ino).c_str()));
    CHECK_FALSE(log::is_journal_stream(fd, nullptr));
    CHECK_FALSE(log::is_journal_stream(fd, ""));
    CHECK_FALSE(log::is_journal_stream(fd, (dev + ":" + ino + "x").c_str()));
    CHECK_FALSE(log::is_journal_stream(fd, "journal"));
    CHECK_FALSE(log::is_journal_stream(-1, (dev + ":" + ino).c_str()));
    std::fclose(f);
}
