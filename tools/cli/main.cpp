// paybridge: argv → cli::run → exit code. The only file outside paybridge_cli_lib.
#include "tools/cli/cli.hpp"

#include <iostream>

int main(int argc, char** argv)
{
    std::vector<std::string> args(argv + 1, argv + argc);
    const paybridge::cli::Io io{std::cout, std::cerr};
    const int rc = paybridge::cli::run(args, io);
    std::cout.flush();
    return rc;
}
