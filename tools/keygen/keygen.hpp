#pragma once

// Development and test key material: RSA key pairs, a test CA and certificates it issues.
// Used by `paybridge keys init`, the tests and the benchmarks. Never for production keys.

#include <cstdint>
#include <string>
#include <vector>

namespace paybridge::keygen {

struct KeyPair {
    std::string private_pem;  ///< PKCS#8 PEM
    std::string public_pem;   ///< SPKI PEM ("PUBLIC KEY")
};

/// A fresh RSA key pair (2048 bits unless said otherwise).
KeyPair generate_rsa(int bits = 2048);

struct CertSpec {
    std::string common_name;
    std::string organization{"paybridge test"};
    std::string organizational_unit;
    std::string country{"CN"};
    std::string serial_hex;           ///< serial number in hex; random 16 bytes when empty
    std::int64_t not_before_unix{0};  ///< 0: now - 1 day
    std::int64_t not_after_unix{0};   ///< 0: now + 5 years
    bool is_ca{false};
    std::vector<std::string> dns_names;  ///< subjectAltName DNS entries (TLS server certs)
    std::vector<std::string> ip_addresses;
};

struct Certificate {
    KeyPair key;
    std::string cert_pem;
};

/// A self-signed CA (sha256WithRSAEncryption).
Certificate make_ca(const CertSpec& spec);
/// A certificate for a new key pair, signed by `issuer`.
Certificate issue(const Certificate& issuer, const CertSpec& spec);

/// Random printable secret of n characters from [A-Za-z0-9] (APIv3/v2 keys, tokens).
std::string random_token(std::size_t n);

}  // namespace paybridge::keygen
