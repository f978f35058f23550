// Prepares a benchmark run: key material, a paybridged config pointing at a given Redis port,
// and files of distinct pre-signed requests (one per line) for bench/wrk_lines.lua:
//   bills.txt     POST /v1/bills bodies
//   alipay.txt    Alipay notification bodies (RSA2-signed, one per bill)
//   wechat.txt    WeChat Pay v3 notifications: ts \t nonce \t signature \t serial \t body
// Signing is spread over every core. Usage:
//   paybridge_bench_gen DIR COUNT REDIS_PORT LISTEN_PORT [WORKERS]

#include "core/money.hpp"
#include "gateways/alipay/alipay_sim.hpp"
#include "gateways/crypto/crypto.hpp"
#include "gateways/wechatpay/wechatpay_sim.hpp"
#include "tools/keygen/keygen.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace paybridge;
namespace fs = std::filesystem;

namespace {

void write_file(const fs::path& p, const std::string& content)
{
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
}

}  // namespace

int main(int argc, char** argv)
{
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s DIR COUNT REDIS_PORT LISTEN_PORT [WORKERS]\n", argv[0]);
        return 2;
    }
    const fs::path dir = argv[1];
    const int count = std::stoi(argv[2]);
    const std::string redis_port = argv[3];
    const std::string listen_port = argv[4];
    const std::string workers = argc > 5 ? argv[5] : "0";

    const auto alipay_keys = keygen::generate_rsa();
    const auto wx_keys = keygen::generate_rsa();
    const std::string apiv3 = keygen::random_token(32);
    const std::string token = keygen::random_token(40);
    write_file(dir / "keys/alipay_public.pem", alipay_keys.public_pem);
    write_file(dir / "keys/wechatpay_public.pem", wx_keys.public_pem);
    write_file(dir / "secrets/apiv3", apiv3);
    write_file(dir / "secrets/token", token);
    const std::string pub_key_id = "PUB_KEY_ID_0114232024110100000000000000000001";
    write_file(dir / "paybridge.json",
               "{\n  \"listen\": \"127.0.0.1:" + listen_port + "\",\n  \"workers\": " + workers +
                   ",\n  \"redis\": {\"url\": \"redis://127.0.0.1:" + redis_port +
                   "/0\"},\n  \"api_tokens\": [{\"name\": \"bench\", \"token\": \"file:secrets/token\"}],\n"
                   "  \"alipay\": {\"apps\": [{\"app_id\": \"2021000000000001\", \"seller_id\": \"2088000000000001\", "
                   "\"alipay_public_key_file\": \"keys/alipay_public.pem\"}]},\n"
                   "  \"wechatpay\": {\"merchants\": [{\"mchid\": \"1900000001\", \"appid\": \"wx0000000000000001\", "
                   "\"apiv3_key\": \"file:secrets/apiv3\", \"public_key_id\": \"" +
                   pub_key_id + "\", \"public_key_file\": \"keys/wechatpay_public.pem\"}]},\n"
                   "  \"log\": {\"level\": \"warning\"}\n}\n");

    const auto alipay_priv = *crypto::load_private_key(alipay_keys.private_pem);
    const auto wx_priv = *crypto::load_private_key(wx_keys.private_pem);
    std::vector<std::string> bills(static_cast<std::size_t>(count) * 2);
    std::vector<std::string> alipay(static_cast<std::size_t>(count));
    std::vector<std::string> wechat(static_cast<std::size_t>(count));
    const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            gateways::wechatpay::sim::V3Signer signer{wx_priv, pub_key_id};
            for (int i = static_cast<int>(t); i < count; i += static_cast<int>(threads)) {
                const std::int64_t fen = 100 + i % 100000;
                const std::string a_id = "BA" + std::to_string(1000000 + i);
                const std::string w_id = "BW" + std::to_string(1000000 + i);
                bills[static_cast<std::size_t>(i) * 2] = "{\"id\":\"" + a_id + "\",\"amount_fen\":" + std::to_string(fen) +
                                                         ",\"currency\":\"CNY\",\"customer_id\":\"c" +
                                                         std::to_string(i % 1000) + "\",\"description\":\"bench\"}";
                bills[static_cast<std::size_t>(i) * 2 + 1] = "{\"id\":\"" + w_id + "\",\"amount_fen\":" +
                                                             std::to_string(fen) +
                                                             ",\"currency\":\"CNY\",\"customer_id\":\"c" +
                                                             std::to_string(i % 1000) + "\",\"description\":\"bench\"}";
                gateways::alipay::NoticeSpec spec;
                spec.app_id = "2021000000000001";
                spec.seller_id = "2088000000000001";
                spec.out_trade_no = a_id;
                spec.amount_fen = fen;
                alipay[static_cast<std::size_t>(i)] =
                    gateways::alipay::build_alipay_body(gateways::alipay::make_paid_notice(spec), alipay_priv.get());
                gateways::wechatpay::sim::V3Transaction tx;
                tx.mchid = "1900000001";
                tx.appid = "wx0000000000000001";
                tx.out_trade_no = w_id;
                tx.total_fen = fen;
                auto n = gateways::wechatpay::sim::make_v3_payment(tx, apiv3, signer);
                if (!n) {
                    throw std::runtime_error("wechat signing failed");
                }
                std::string ts, nonce, sig, serial;
                for (const auto& [k, v] : n->headers) {
                    if (k == "Wechatpay-Timestamp") ts = v;
                    if (k == "Wechatpay-Nonce") nonce = v;
                    if (k == "Wechatpay-Signature") sig = v;
                    if (k == "Wechatpay-Serial") serial = v;
                }
                wechat[static_cast<std::size_t>(i)] = ts + "\t" + nonce + "\t" + sig + "\t" + serial + "\t" + n->body;
            }
        });
    }
    for (auto& t : pool) {
        t.join();
    }
    auto dump = [&dir](const char* name, const std::vector<std::string>& lines) {
        std::ofstream out(dir / name, std::ios::binary);
        for (const auto& l : lines) {
            out << l << '\n';
        }
    };
    dump("bills.txt", bills);
    dump("alipay.txt", alipay);
    dump("wechat.txt", wechat);
    std::printf("%s\n", token.c_str());
    return 0;
}
