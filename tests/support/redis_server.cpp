#include "tests/support/redis_server.hpp"

#include "tests/support/process.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
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
    pid_t pid = -1;
    // The child must not inherit the test's sockets (a fake CRM's listener would stay open in it),
    // nor its stdio: ctest waits for the test's output pipe to close, so a redis-server orphaned
    // by a crashed test would hold ctest up until its timeout. What Redis prints before its log
    // file is open (a bad argument) goes to redis.stdout.
    const std::string stdout_file = dir_ + "/redis.stdout";
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, stdout_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    const int rc = ::posix_spawn(&pid, binary_.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
        throw std::runtime_error(std::string("posix_spawn(redis-server) failed: ") + std::strerror(rc));
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
