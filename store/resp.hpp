#pragma once

// RESP request encoding: what every command paybridge sends to Redis looks like on the wire.
// (Replies are read by hiredis' RESP reader, in redis_connection.cpp.)

#include <string>
#include <vector>

namespace paybridge::store {

/// Appends one command, as a RESP array of bulk strings ("*<n>\r\n" then "$<len>\r\n<bytes>\r\n"
/// per argument: binary-safe), to out. Byte for byte what hiredis' redisFormatCommandArgv
/// writes, without its sprintf per argument (about 23,000 instructions for one bill-script
/// EVALSHA of 27 arguments, measured with callgrind) or its separate allocation.
/// An empty argv appends nothing and returns false.
bool append_command(std::string& out, const std::vector<std::string>& argv);

/// EVALSHA sha <number of keys> keys... args..., the arguments moved in.
std::vector<std::string> evalsha_command(const std::string& sha, std::vector<std::string> keys,
                                         std::vector<std::string> args);

}  // namespace paybridge::store
