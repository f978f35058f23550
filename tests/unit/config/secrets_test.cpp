#include "config/secrets.hpp"

#include "tests/unit/config/sandbox.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

using namespace paybridge;
using config::SecretSource;
using config::test::Sandbox;

TEST_CASE("secrets: only env:, file: and cred: with a name are references")
{
    CHECK(SecretSource::is_reference("env:A"));
    CHECK(SecretSource::is_reference("file:k.txt"));
    CHECK(SecretSource::is_reference("cred:crm"));
    CHECK_FALSE(SecretSource::is_reference("env:"));
    CHECK_FALSE(SecretSource::is_reference("ENV:A"));
    CHECK_FALSE(SecretSource::is_reference("0123456789abcdef0123456789abcdef"));
    CHECK_FALSE(SecretSource::is_reference(""));
}

TEST_CASE("secrets: env: reads the injected environment, not the process's")
{
    ::setenv("PAYBRIDGE_CONFIG_TEST_ONLY_IN_PROCESS", "process-value", 1);
    const SecretSource secrets(SecretSource::Environment{{"PAYBRIDGE_TEST_KEY", "s3cr3t value\n"}, {"EMPTY", ""}});

    auto found = secrets.resolve("env:PAYBRIDGE_TEST_KEY");
    REQUIRE(found);
    CHECK(*found.value == "s3cr3t value\n");  // environment values are taken byte for byte

    auto missing = secrets.resolve("env:PAYBRIDGE_CONFIG_TEST_ONLY_IN_PROCESS");
    CHECK_FALSE(missing);
    CHECK(missing.problem == "environment variable PAYBRIDGE_CONFIG_TEST_ONLY_IN_PROCESS is not set");

    auto empty = secrets.resolve("env:EMPTY");
    CHECK_FALSE(empty);
    CHECK(empty.problem == "environment variable EMPTY is empty");

    auto invalid = secrets.resolve("env:NOT-A-NAME");
    CHECK_FALSE(invalid);
    CHECK(invalid.problem == "the text after env: is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)");
    // A secret pasted after env: by mistake is not repeated in the problem (it reaches --check's
    // output and the journal).
    auto pasted = secrets.resolve("env:whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw/w+=");
    CHECK_FALSE(pasted);
    CHECK(pasted.problem.find("MfKQ9r8") == std::string::npos);
}

TEST_CASE("secrets: without an injected environment, env: uses getenv")
{
    ::setenv("PAYBRIDGE_CONFIG_TEST_GETENV", "from-getenv", 1);
    const SecretSource secrets;
    auto found = secrets.resolve("env:PAYBRIDGE_CONFIG_TEST_GETENV");
    REQUIRE(found);
    CHECK(*found.value == "from-getenv");
    ::unsetenv("PAYBRIDGE_CONFIG_TEST_GETENV");
    CHECK_FALSE(secrets.resolve("env:PAYBRIDGE_CONFIG_TEST_GETENV"));
}

TEST_CASE("secrets: file: is relative to the base folder and loses its trailing line break")
{
    Sandbox box;
    box.write("secrets/unix.txt", "abc def\n");
    box.write("secrets/dos.txt", "line1\nline2\r\n");
    box.write("secrets/blank.txt", "\n");
    const SecretSource secrets(SecretSource::Environment{});

    auto unix_file = secrets.resolve("file:secrets/unix.txt", box.dir());
    REQUIRE(unix_file);
    CHECK(*unix_file.value == "abc def");

    auto dos_file = secrets.resolve("file:secrets/dos.txt", box.dir());
    REQUIRE(dos_file);
    CHECK(*dos_file.value == "line1\nline2");

    auto absolute = secrets.resolve("file:" + (box.dir() / "secrets/unix.txt").string(), "/nonexistent");
    REQUIRE(absolute);
    CHECK(*absolute.value == "abc def");

    auto blank = secrets.resolve("file:secrets/blank.txt", box.dir());
    CHECK_FALSE(blank);
    CHECK(blank.problem == "secrets/blank.txt is empty");

    auto missing = secrets.resolve("file:secrets/nope.txt", box.dir());
    CHECK_FALSE(missing);
    CHECK(missing.problem == "cannot read secrets/nope.txt: No such file or directory");

    auto directory = secrets.resolve("file:secrets", box.dir());
    CHECK_FALSE(directory);
    CHECK(directory.problem == "cannot read secrets: Is a directory");

    box.write("secrets/huge.txt", std::string(SecretSource::kMaxSecretBytes + 1, 'x'));
    auto huge = secrets.resolve("file:secrets/huge.txt", box.dir());
    CHECK_FALSE(huge);
    CHECK(huge.problem.find("larger than") != std::string::npos);

    auto device = secrets.resolve("file:/dev/null", box.dir());
    CHECK_FALSE(device);
    CHECK(device.problem == "cannot read /dev/null: not a regular file (a FIFO, socket or device)");
}

TEST_CASE("secrets: file: naming a FIFO is refused at once, not waited on")
{
    // Opening a FIFO for reading waits for a writer: a reload (on the thread that pings systemd's
    // watchdog) or a start would hang. The writer below turns up after 2 s, so that code which does
    // wait reads "secret" and fails the checks instead of hanging the test.
    Sandbox box;
    const std::filesystem::path fifo = box.dir() / "pipe";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    std::atomic<bool> resolved{false};
    std::thread writer([&] {
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(4);
        std::this_thread::sleep_for(std::chrono::seconds(2));
        while (!resolved && std::chrono::steady_clock::now() < until) {
            // Non-blocking: fails (ENXIO) while nobody has the FIFO open for reading.
            const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
            if (fd >= 0) {
                (void)!::write(fd, "secret", 6);
                ::close(fd);
                return;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    });
    const SecretSource secrets(SecretSource::Environment{});
    auto piped = secrets.resolve("file:pipe", box.dir());
    resolved = true;
    writer.join();
    CHECK_FALSE(piped);
    CHECK(piped.problem == "cannot read pipe: not a regular file (a FIFO, socket or device)");
}

TEST_CASE("secrets: file: reports permission problems")
{
    Sandbox box;
    const auto path = box.write("locked.txt", "value");
    REQUIRE(::chmod(path.c_str(), 0) == 0);
    const SecretSource secrets(SecretSource::Environment{});
    std::string problem;
    if (::geteuid() != 0) {
        problem = secrets.resolve("file:locked.txt", box.dir()).problem;
    } else {
        // Root reads anything (CI runs as root): look from a child process that is nobody.
        int fds[2];
        REQUIRE(::pipe(fds) == 0);
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            ::close(fds[0]);
            constexpr uid_t kNobody = 65534;
            if (::setgroups(0, nullptr) != 0 || ::setresgid(kNobody, kNobody, kNobody) != 0 ||
                ::setresuid(kNobody, kNobody, kNobody) != 0) {
                ::_exit(2);
            }
            const auto locked = secrets.resolve("file:locked.txt", box.dir());
            const std::string text = locked ? std::string("read it") : locked.problem;
            const bool written = ::write(fds[1], text.data(), text.size()) == static_cast<ssize_t>(text.size());
            ::_exit(written ? 0 : 3);
        }
        ::close(fds[1]);
        char buf[256];
        for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) {
            problem.append(buf, static_cast<std::size_t>(n));
        }
        ::close(fds[0]);
        int status = 0;
        REQUIRE(::waitpid(pid, &status, 0) == pid);
        REQUIRE(WIFEXITED(status));
        REQUIRE(WEXITSTATUS(status) == 0);
    }
    CHECK(problem == "cannot read locked.txt: Permission denied");
}

TEST_CASE("secrets: cred: reads $CREDENTIALS_DIRECTORY/NAME")
{
    Sandbox box;
    box.write("creds/crm", "whsec_AAAA\n");
    const SecretSource secrets(SecretSource::Environment{{"CREDENTIALS_DIRECTORY", (box.dir() / "creds").string()}});

    auto found = secrets.resolve("cred:crm");
    REQUIRE(found);
    CHECK(*found.value == "whsec_AAAA");

    auto missing = secrets.resolve("cred:other");
    CHECK_FALSE(missing);
    CHECK(missing.problem == "cannot read " + (box.dir() / "creds/other").string() + ": No such file or directory");

    auto escape = secrets.resolve("cred:../creds/crm");
    CHECK_FALSE(escape);
    CHECK(escape.problem == "credential name \"../creds/crm\" must be a plain file name");

    const SecretSource no_dir(SecretSource::Environment{});
    auto unset = no_dir.resolve("cred:crm");
    CHECK_FALSE(unset);
    CHECK(unset.problem == "cred:crm needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=), which is not set");
}

TEST_CASE("secrets: an inline literal is refused without echoing it")
{
    const SecretSource secrets(SecretSource::Environment{});
    auto inline_value = secrets.resolve("0123456789abcdef0123456789abcdef");
    CHECK_FALSE(inline_value);
    CHECK(inline_value.problem == "inline secret values are not allowed; use env:NAME, file:PATH or cred:NAME");
    CHECK_FALSE(secrets.resolve("env:"));
}
