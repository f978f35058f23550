#pragma once

// Child processes for end-to-end tests: the real paybridged binary, started on free loopback
// ports with a generated configuration, stopped with a signal, its exit code checked.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace paybridge::test {

/// A TCP port that was free on 127.0.0.1 a moment ago.
std::uint16_t free_port();

/// A fresh temporary folder, removed by the destructor.
class TempDir {
public:
    TempDir();
    ~TempDir();
    const std::filesystem::path& path() const noexcept { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }
    void write(const std::string& name, const std::string& content) const;

private:
    std::filesystem::path path_;
};

/// Ties a child process to the test binary: a child forked from the main thread gets
/// PR_SET_PDEATHSIG = SIGKILL, so a test binary that crashes (or is killed by ctest's timeout) does not
/// leave redis-server or paybridged running behind it. PDEATHSIG fires when the forking *thread* ends,
/// so a child forked from any other thread is left untied (it would die with that thread); every
/// child of the support code is started from the test's main thread today.
struct ChildGuard {
    int parent{-1};         ///< getpid() of the test binary
    bool main_thread{false};  ///< fork() is called on the main thread

    /// Call in the parent, right before fork().
    static ChildGuard here();
    /// Call in the child, right after fork() (async-signal-safe): sets the death signal, and exits at
    /// once if the parent is already gone.
    void apply_in_child() const noexcept;
};

class Process {
public:
    /// Starts argv[0] with the arguments; stdout and stderr go to `log_file`.
    Process(std::vector<std::string> argv, std::filesystem::path log_file,
            std::map<std::string, std::string> extra_env = {});
    ~Process();
    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;

    int pid() const noexcept { return pid_; }
    bool running();
    /// Sends a signal without waiting.
    void signal(int sig);
    /// Sends `sig` and waits up to `limit`; returns the exit code, 128+signal if killed by one,
    /// or -1 if it did not exit in time (then it is SIGKILLed).
    int stop(int sig, std::chrono::milliseconds limit = std::chrono::seconds(20));
    /// Waits for exit without signalling; -1 on timeout.
    int wait(std::chrono::milliseconds limit);
    std::string log() const;

private:
    int pid_{-1};
    int status_{-1};
    bool reaped_{false};
    std::filesystem::path log_file_;
};

/// Runs a command to completion; returns its exit code and fills `output` (stdout + stderr).
int run_command(const std::vector<std::string>& argv, std::string& output,
                std::chrono::milliseconds limit = std::chrono::seconds(60),
                const std::map<std::string, std::string>& extra_env = {});

/// Polls GET path on 127.0.0.1:port until it answers `status` or the limit passes.
bool wait_for_http(std::uint16_t port, const std::string& path, int status, std::chrono::milliseconds limit);

}  // namespace paybridge::test
