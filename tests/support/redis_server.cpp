#include "tests/support/redis_server.hpp"

#include "tests/support/process.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace paybridge::test {
namespace {

namespace fs = std::filesystem;

std::string find_redis_server()
{
    if (const char* path = std::getenv("PATH")) {
        std::stringstream dirs(path);
        std::string dir;
        while (std::getline(dirs, dir, ':')) {
            if (dir.empty()) {
                continue;
            }
            const fs::path candidate = fs::path(dir) / "redis-server";
            if (::access(candidate.c_str(), X_OK) == 0) {
                return candidate.string();
            }
        }
    }
    if (::access("/usr/bin/redis-server", X_OK) == 0) {
        return "/usr/bin/redis-server";
    }
    throw std::runtime_error("redis-server not found in PATH or /usr/bin");
}

// One blocking PING over a fresh socket; true when the server answered anything RESP-like
// ("+PONG", or "-NOAUTH" when a password is required).
bool answers_ping(std::uint16_t port)
{
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return false;
    }
    timeval tv{.tv_sec = 0, .tv_usec = 200'000};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    bool ok = false;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
        static constexpr char kPing[] = "*1\r\n$4\r\nPING\r\n";
        if (::write(fd, kPing, sizeof kPing - 1) == static_cast<ssize_t>(sizeof kPing - 1)) {
            char buf[64];
            const ssize_t n = ::read(fd, buf, sizeof buf);
            ok = n > 0 && (buf[0] == '+' || buf[0] == '-');
        }
    }
    ::close(fd);
    return ok;
}

std::string read_file(const std::string& path)
{
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

}  // namespace

RedisTestServer::RedisTestServer(std::vector<std::string> extra_args)
    : binary_(find_redis_server()), extra_args_(std::move(extra_args)), port_(free_port())
{
    start_in_fresh_dir();
}

RedisTestServer::RedisTestServer(SentinelTag, std::string sentinel_conf, std::vector<std::string> extra_args)
    : binary_(find_redis_server()),
      extra_args_(std::move(extra_args)),
      sentinel_conf_(std::move(sentinel_conf)),
      port_(free_port())
{
    start_in_fresh_dir();
}

std::unique_ptr<RedisTestServer> RedisTestServer::sentinel(std::uint16_t master_port, const std::string& name,
                                                           std::vector<std::string> extra_args)
{
    const std::string conf = "sentinel monitor " + name + " 127.0.0.1 " + std::to_string(master_port) + " 1\n" +
                             "sentinel down-after-milliseconds " + name + " 1000\n" +
                             "sentinel failover-timeout " + name + " 5000\n";
    return std::unique_ptr<RedisTestServer>(new RedisTestServer(SentinelTag{}, conf, std::move(extra_args)));
}

void RedisTestServer::start_in_fresh_dir()
{
    std::string tmpl = (fs::temp_directory_path() / "paybridge-redis-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
        throw std::runtime_error("mkdtemp failed");
    }
    dir_ = tmpl;
    if (!sentinel_conf_.empty()) {
        std::ofstream(dir_ + "/sentinel.conf") << sentinel_conf_;
    }
    // free_port() releases the port before redis-server binds it, so a test running in parallel
    // can take it in between: then redis-server exits with "Address already in use", and another
    // port is tried.
    for (int attempt = 1;; ++attempt) {
        launch();
        try {
            wait_ready();
            return;
        } catch (const std::runtime_error&) {
            const bool port_taken = read_file(dir_ + "/redis.log").find("Address already in use") != std::string::npos;
            if (!port_taken || attempt == 5) {
                throw;
            }
            std::error_code ignored;
            fs::remove(dir_ + "/redis.log", ignored);
            port_ = free_port();
        }
    }
}

RedisTestServer::~RedisTestServer()
{
    stop();
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
}

void RedisTestServer::launch()
{
    std::vector<std::string> args{binary_};
    if (!sentinel_conf_.empty()) {
        // Sentinel mode wants its (writable) config file first.
        args.push_back(dir_ + "/sentinel.conf");
        args.push_back("--sentinel");
    }
    const std::vector<std::string> common{"--port", std::to_string(port_),
                                          "--bind", "127.0.0.1",
                                          "--save", "",
                                          "--appendonly", "no",
                                          "--dir", dir_,
                                          "--daemonize", "no",
                                          "--logfile", dir_ + "/redis.log"};
    args.insert(args.end(), common.begin(), common.end());
    args.insert(args.end(), extra_args_.begin(), extra_args_.end());
    std::vector<char*> argv;
    for (std::string& a : args) {
        argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    // The child must not inherit the test's sockets (a fake CRM's listener would stay open in it),
    // nor its stdio: ctest waits for the test's output pipe to close, so a redis-server orphaned
    // by a crashed test would hold ctest up until its timeout. What Redis prints before its log
    // file is open (a bad argument) goes to redis.stdout. fork + exec rather than posix_spawn, so
    // that the child can be tied to the test binary (ChildGuard: PR_SET_PDEATHSIG) and dies with it.
    // Everything the child needs is prepared before fork: between fork and exec it makes only
    // async-signal-safe calls. A close-on-exec pipe carries exec's errno back (EOF: exec succeeded).
    const std::string stdout_file = dir_ + "/redis.stdout";
    int report[2];
    if (::pipe2(report, O_CLOEXEC) != 0) {
        throw std::runtime_error(std::string("pipe2 failed: ") + std::strerror(errno));
    }
    const ChildGuard guard = ChildGuard::here();
    const pid_t pid = ::fork();
    if (pid == 0) {
        guard.apply_in_child();
        int err = 0;
        const int in = ::open("/dev/null", O_RDONLY);
        const int out = ::open(stdout_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (in < 0 || out < 0 || ::dup2(in, 0) < 0 || ::dup2(out, 1) < 0 || ::dup2(out, 2) < 0) {
            err = errno;
        } else {
            // Everything above stdio, except the report pipe (close-on-exec: exec closes it).
            const auto keep = static_cast<unsigned>(report[1]);
            if (keep > 3) {
                ::close_range(3, keep - 1, 0);
            }
            ::close_range(keep >= 3 ? keep + 1 : 3, ~0U, 0);
            ::execve(binary_.c_str(), argv.data(), environ);
            err = errno;
        }
        (void)!::write(report[1], &err, sizeof err);
        ::_exit(127);
    }
    const int fork_errno = errno;
    ::close(report[1]);
    if (pid < 0) {
        ::close(report[0]);
        throw std::runtime_error(std::string("fork(redis-server) failed: ") + std::strerror(fork_errno));
    }
    int child_errno = 0;
    ssize_t n = -1;
    do {
        n = ::read(report[0], &child_errno, sizeof child_errno);
    } while (n < 0 && errno == EINTR);
    ::close(report[0]);
    if (n > 0) {
        int status = 0;
        while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        throw std::runtime_error("exec(" + binary_ + ") failed: " + std::strerror(child_errno));
    }
    pid_ = pid;
}

void RedisTestServer::wait_ready()
{
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) == pid_) {
            pid_ = -1;
            throw std::runtime_error("redis-server exited at start-up: " + read_file(dir_ + "/redis.log"));
        }
        if (answers_ping(port_)) {
            return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    stop();
    throw std::runtime_error("redis-server did not answer PING within 10 s");
}

void RedisTestServer::stop()
{
    if (pid_ <= 0) {
        return;
    }
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
}

void RedisTestServer::freeze()
{
    if (pid_ <= 0) {
        throw std::runtime_error("freeze: redis-server is not running");
    }
    ::kill(pid_, SIGSTOP);
    int status = 0;
    pid_t r = -1;
    do {
        r = ::waitpid(pid_, &status, WUNTRACED);
    } while (r < 0 && errno == EINTR);
    if (r != pid_ || !WIFSTOPPED(status)) {
        if (r == pid_) {
            pid_ = -1;  // it exited instead
        }
        throw std::runtime_error("freeze: redis-server did not stop");
    }
}

void RedisTestServer::thaw()
{
    if (pid_ > 0) {
        ::kill(pid_, SIGCONT);
    }
}

void RedisTestServer::restart()
{
    stop();
    launch();
    wait_ready();
}

bool run_until(boost::asio::io_context& ctx, const std::function<bool()>& pred, std::chrono::milliseconds limit)
{
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline) {
            return pred();
        }
        if (ctx.stopped()) {
            ctx.restart();
        }
        const auto slice = std::min<std::chrono::steady_clock::duration>(deadline - now, std::chrono::milliseconds(20));
        if (ctx.run_one_for(slice) == 0 && ctx.stopped()) {
            // Out of work: nothing can change pred() except time passing elsewhere.
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    }
    return true;
}

void run_for(boost::asio::io_context& ctx, std::chrono::milliseconds duration)
{
    const auto deadline = std::chrono::steady_clock::now() + duration;
    run_until(ctx, [deadline] { return std::chrono::steady_clock::now() >= deadline; }, duration);
}

void run_awaitable(boost::asio::io_context& ctx, boost::asio::awaitable<void> coro, std::chrono::milliseconds limit)
{
    auto done = std::make_shared<bool>(false);
    auto error = std::make_shared<std::exception_ptr>();
    boost::asio::co_spawn(ctx, std::move(coro), [done, error](std::exception_ptr e) {
        *error = e;
        *done = true;
    });
    if (!run_until(ctx, [&done] { return *done; }, limit)) {
        throw std::runtime_error("run_awaitable: coroutine did not finish in time");
    }
    if (*error) {
        std::rethrow_exception(*error);
    }
}

}  // namespace paybridge::test
