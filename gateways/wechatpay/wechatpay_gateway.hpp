#pragma once

// Everything the composition root needs from the WeChat Pay folder: the API v3 gateway
// (POST /notify/wechatpay/{mchid}) and the legacy API v2 gateway (POST /notify/wechatpay/{mchid}/v2),
// with their factories make_wechat_v3_gateway and make_wechat_v2_gateway.

#include "gateways/wechatpay/wechatpay_v2_gateway.hpp"
#include "gateways/wechatpay/wechatpay_v3_gateway.hpp"
