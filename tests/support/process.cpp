#include "tests/support/process.hpp"

#include "tests/support/http_client.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace paybridge::test {

namespace {

// True when nothing holds `port` on loopback right now.
bool can_bind(std::uint16_t port)
{
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return false;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    return ok;
}

// The lower end of the kernel's ephemeral port range (outgoing connections' local ports).
int ephemeral_low()
{
    std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
    int low = 0;
    int high = 0;
    if (in >> low >> high && low > 0) {
        return low;
    }
    return 32768;
}

}  // namespace

// A port for a server a test starts. Chosen at random below the ephemeral range: a port from
// bind(0) is an ephemeral one, which any outgoing connection (a test's client, a Redis client)
// may take between this check and the server's bind -- seen in CI as redis-server's "Address
// already in use". Below the range only another test's pick can collide, and that is random.
std::uint16_t free_port()
{
    static const int low = ephemeral_low();
    if (low > 11000) {
        thread_local std::mt19937 rng(std::random_device{}() ^ static_cast<unsigned>(::getpid()));
        std::uniform_int_distribution<int> pick(10000, low - 1);
        for (int i = 0; i < 200; ++i) {
            const auto port = static_cast<std::uint16_t>(pick(rng));
            if (can_bind(port)) {
                return port;
            }
        }
    }
    // An unusual range: let the kernel choose.
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd);
        throw std::runtime_error("free_port: bind failed");
    }
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    ::close(fd);
    return ntohs(addr.sin_port);
}

TempDir::TempDir()
{
    std::random_device rd;
    const auto base = std::filesystem::temp_directory_path();
    for (;;) {
        path_ = base / ("paybridge-test-" + std::to_string(rd()));
        if (std::filesystem::create_directory(path_)) {
            break;
        }
    }
}

TempDir::~TempDir()
{
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

void TempDir::write(const std::string& name, const std::string& content) const
{
    std::filesystem::create_directories((path_ / name).parent_path());
    std::ofstream(path_ / name, std::ios::binary) << content;
}

namespace {

std::vector<std::string> environment_with(const std::map<std::string, std::string>& extra)
{
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) {
        const std::string entry(*e);
        const auto name = entry.substr(0, entry.find('='));
        if (!extra.count(name)) {
            env.push_back(entry);
        }
    }
    for (const auto& [k, v] : extra) {
        env.push_back(k + "=" + v);
    }
    return env;
}

}  // namespace

ChildGuard ChildGuard::here()
{
    // PR_SET_PDEATHSIG fires when the *thread* that forked ends, not the process: set it only for a
    // child forked by the main thread (whose end is the process's end), or a child started from a
    // short-lived helper thread would be killed when that thread returns.
    const pid_t pid = ::getpid();
    return ChildGuard{pid, static_cast<pid_t>(::syscall(SYS_gettid)) == pid};
}

void ChildGuard::apply_in_child() const noexcept
{
    if (!main_thread) {
        return;
    }
    // Only async-signal-safe calls: this runs between fork and exec.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) {
        ::_exit(127);  // the test binary died before the line above took effect
    }
}

namespace {

int spawn(const std::vector<std::string>& argv, int out_fd, const std::map<std::string, std::string>& extra_env)
{
    std::vector<std::string> env = environment_with(extra_env);
    std::vector<char*> args;
    for (const auto& a : argv) {
        args.push_back(const_cast<char*>(a.c_str()));
    }
    args.push_back(nullptr);
    std::vector<char*> envp;
    for (auto& e : env) {
        envp.push_back(e.data());
    }
    envp.push_back(nullptr);
    const ChildGuard guard = ChildGuard::here();
    const int pid = ::fork();
    if (pid == 0) {
        guard.apply_in_child();
        ::dup2(out_fd, 1);
        ::dup2(out_fd, 2);
        const int devnull = ::open("/dev/null", O_RDONLY);
        ::dup2(devnull, 0);
        // Keep only stdio: the test's sockets (fake CRM listeners...) must not live on in the child.
        ::close_range(3, ~0U, 0);
        ::execve(args[0], args.data(), envp.data());
        ::_exit(127);
    }
    return pid;
}

int decode(int status)
{
    if (WIFEXITED(status)) {
        return WEXITSTATUS(status);
    }
    if (WIFSIGNALED(status)) {
        return 128 + WTERMSIG(status);
    }
    return -1;
}

}  // namespace

Process::Process(std::vector<std::string> argv, std::filesystem::path log_file,
                 std::map<std::string, std::string> extra_env)
    : log_file_(std::move(log_file))
{
    const int fd = ::open(log_file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    pid_ = spawn(argv, fd, extra_env);
    ::close(fd);
    if (pid_ < 0) {
        throw std::runtime_error("fork failed");
    }
}

Process::~Process()
{
    if (!reaped_ && pid_ > 0) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status_, 0);
    }
}

bool Process::running()
{
    if (reaped_) {
        return false;
    }
    const int r = ::waitpid(pid_, &status_, WNOHANG);
    if (r == pid_) {
        reaped_ = true;
        return false;
    }
    return true;
}

void Process::signal(int sig)
{
    if (!reaped_) {
        ::kill(pid_, sig);
    }
}

int Process::wait(std::chrono::milliseconds limit)
{
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
        if (!running()) {
            return decode(status_);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
}

int Process::stop(int sig, std::chrono::milliseconds limit)
{
    if (reaped_) {
        return decode(status_);
    }
    ::kill(pid_, sig);
    const int code = wait(limit);
    if (code == -1) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status_, 0);
        reaped_ = true;
        return -1;
    }
    return code;
}

std::string Process::log() const
{
    std::ifstream in(log_file_, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

int run_command(const std::vector<std::string>& argv, std::string& output, std::chrono::milliseconds limit,
                const std::map<std::string, std::string>& extra_env)
{
    TempDir dir;
    int code = -1;
    {
        Process p(argv, dir / "out.log", extra_env);
        code = p.wait(limit);
        if (code == -1) {
            p.stop(SIGKILL, std::chrono::seconds(5));
        }
        output = p.log();
    }
    return code;
}

bool wait_for_http(std::uint16_t port, const std::string& path, int status, std::chrono::milliseconds limit)
{
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
        HttpResult r = http_request(port, "GET", path);
        if (r.status == status) {
            return true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    return false;
}

}  // namespace paybridge::test
