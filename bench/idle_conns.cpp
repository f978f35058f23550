// Opens N idle keep-alive connections to 127.0.0.1:PORT and holds them for SECONDS, so the
// benchmark can read the daemon's RSS with that many clients connected.
//   paybridge_idle_conns PORT N SECONDS

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv)
{
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s PORT N SECONDS\n", argv[0]);
        return 2;
    }
    const int port = std::atoi(argv[1]);
    const int n = std::atoi(argv[2]);
    const int seconds = std::atoi(argv[3]);
    rlimit lim{static_cast<rlim_t>(n + 64), static_cast<rlim_t>(n + 64)};
    setrlimit(RLIMIT_NOFILE, &lim);
    std::vector<int> fds;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    for (int i = 0; i < n; ++i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
            std::fprintf(stderr, "connection %d failed\n", i);
            break;
        }
        fds.push_back(fd);
    }
    std::printf("open=%zu\n", fds.size());
    std::fflush(stdout);
    ::sleep(static_cast<unsigned>(seconds));
    for (int fd : fds) {
        ::close(fd);
    }
    return 0;
}
