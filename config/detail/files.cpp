#include "config/detail/files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace paybridge::config::detail {

namespace {

struct FdCloser {
    int fd;
    ~FdCloser()
    {
        if (fd >= 0) {
            ::close(fd);
        }
    }
};

std::string errno_text(int err) { return std::strerror(err); }

}  // namespace

FileContent read_file(const std::filesystem::path& path, std::size_t max_bytes)
{
    FileContent out;
    // open(2) rather than ifstream: the operator needs errno's reason ("Permission denied" under
    // systemd's ProtectSystem is the usual one), which iostreams do not report.
    // O_NONBLOCK: opening a FIFO would otherwise wait for a writer, for ever (and a reload runs on
    // the thread that pings systemd's watchdog). Only regular files are read, below.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        out.error = errno_text(errno);
        return out;
    }
    FdCloser closer{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        out.error = errno_text(errno);
        return out;
    }
    if (S_ISDIR(st.st_mode)) {
        out.error = errno_text(EISDIR);
        return out;
    }
    if (!S_ISREG(st.st_mode)) {
        out.error = "not a regular file (a FIFO, socket or device)";
        return out;
    }
    out.mode = static_cast<unsigned>(st.st_mode & 07777);
    out.uid = static_cast<unsigned>(st.st_uid);
    std::string content;
    char buffer[8192];
    for (;;) {
        const ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            out.error = errno_text(errno);
            return out;
        }
        if (n == 0) {
            break;
        }
        if (content.size() + static_cast<std::size_t>(n) > max_bytes) {
            out.error = "file is larger than " + std::to_string(max_bytes) + " bytes";
            return out;
        }
        content.append(buffer, static_cast<std::size_t>(n));
    }
    out.content = std::move(content);
    return out;
}

std::string world_readable_warning(unsigned mode, std::string_view shown)
{
    if ((mode & S_IRWXO) == 0) {
        return {};
    }
    char octal[8];
    std::snprintf(octal, sizeof octal, "%04o", mode & 07777U);
    return std::string(shown) + " holds a secret but every user may read it (mode " + octal +
           "): chmod o-rwx it";
}

std::string foreign_writable_warning(const FileContent& file, std::string_view shown)
{
    const auto self_uid = static_cast<unsigned>(::geteuid());
    if ((file.mode & (S_IWGRP | S_IWOTH)) != 0) {
        char octal[8];
        std::snprintf(octal, sizeof octal, "%04o", file.mode & 07777U);
        return std::string(shown) + " may be changed by users other than its owner (mode " + octal +
               "), and paybridged trusts what it holds: chmod go-w it";
    }
    if (file.uid != 0 && file.uid != self_uid) {
        return std::string(shown) + " is owned by uid " + std::to_string(file.uid) +
               ", neither root nor the user paybridged runs as (uid " + std::to_string(self_uid) +
               "), who may change it, and paybridged trusts what it holds: chown it";
    }
    return {};
}

}  // namespace paybridge::config::detail
