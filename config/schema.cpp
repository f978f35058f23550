#include "config/schema.hpp"

namespace paybridge::config {

// Defaults are not repeated here: config/config.hpp owns them, config/README.md documents them.
// Upper bounds are sanity limits that catch unit mistakes (seconds written as milliseconds and
// the reverse) rather than hard product limits.
const std::string_view kConfigSchema = R"json({
  "$schema": "http://json-schema.org/draft-04/schema#",
  "title": "paybridge configuration",
  "type": "object",
  "additionalProperties": false,
  "definitions": {
    "secret_ref": {
      "type": "string",
      "pattern": "^(env|file|cred):.+$",
      "description": "a secret reference (env:NAME, file:PATH or cred:NAME); inline secret values are not allowed"
    },
    "file_path": { "type": "string", "minLength": 1 },
    "endpoint": {
      "type": "string",
      "pattern": "^.+:[0-9]+$",
      "description": "host:port (an IPv6 address in brackets: [::1]:8080)"
    },
    "duration_ms": { "type": "integer", "minimum": 1, "maximum": 3600000 },
    "digits": { "type": "string", "pattern": "^[0-9]+$", "maxLength": 32, "description": "a string of digits" },
    "http_url": { "type": "string", "pattern": "^https?://[^/]", "description": "an http:// or https:// URL" }
  },
  "properties": {
    "listen": { "$ref": "#/definitions/endpoint" },
    "tls": {
      "type": "object",
      "additionalProperties": false,
      "required": ["listen", "cert_file", "key_file"],
      "properties": {
        "listen": { "$ref": "#/definitions/endpoint" },
        "cert_file": { "$ref": "#/definitions/file_path" },
        "key_file": { "$ref": "#/definitions/file_path" },
        "routes": {
          "type": "array",
          "minItems": 1,
          "uniqueItems": true,
          "items": { "enum": ["notify", "api", "health", "metrics"] }
        }
      }
    },
    "workers": { "type": "integer", "minimum": 0, "maximum": 1024 },
    "limits": {
      "type": "object",
      "additionalProperties": false,
      "properties": {
        "max_header_bytes": { "type": "integer", "minimum": 1, "maximum": 1048576 },
        "max_body_bytes": { "type": "integer", "minimum": 1, "maximum": 67108864 },
        "read_timeout_ms": { "$ref": "#/definitions/duration_ms" },
        "idle_timeout_ms": { "$ref": "#/definitions/duration_ms" },
        "write_timeout_ms": { "$ref": "#/definitions/duration_ms" },
        "shutdown_grace_ms": { "$ref": "#/definitions/duration_ms" },
        "max_connections": { "type": "integer", "minimum": 1, "maximum": 1000000 }
      }
    },
    "redis": {
      "type": "object",
      "additionalProperties": false,
      "properties": {
        "url": {
          "type": "string",
          "pattern": "^redis://",
          "description": "a redis://[user@]host[:port][/db] URL"
        },
        "password": { "$ref": "#/definitions/secret_ref" },
        "key_prefix": {
          "type": "string",
          "maxLength": 64,
          "pattern": "^[^{}]*$",
          "description": "a prefix without { or } (they would break the hash tags of the keys)"
        },
        "shards": { "type": "integer", "minimum": 1, "maximum": 16384 },
        "request_timeout_ms": { "$ref": "#/definitions/duration_ms" },
        "connect_timeout_ms": { "$ref": "#/definitions/duration_ms" },
        "wait_replicas": { "type": "integer", "minimum": 0, "maximum": 64 },
        "wait_timeout_ms": { "$ref": "#/definitions/duration_ms" },
        "sentinel": {
          "type": "object",
          "additionalProperties": false,
          "required": ["master", "nodes"],
          "properties": {
            "master": { "type": "string", "minLength": 1, "maxLength": 256 },
            "nodes": {
              "type": "array",
              "minItems": 1,
              "maxItems": 16,
              "items": { "type": "string", "description": "a host:port of a sentinel" }
            },
            "username": { "type": "string", "minLength": 1, "maxLength": 256 },
            "password": { "$ref": "#/definitions/secret_ref" }
          }
        },
        "cluster": {
          "type": "object",
          "additionalProperties": false,
          "required": ["nodes"],
          "properties": {
            "nodes": {
              "type": "array",
              "minItems": 1,
              "maxItems": 64,
              "items": { "type": "string", "description": "a host:port of a cluster node" }
            }
          }
        }
      }
    },
    "api_tokens": {
      "type": "array",
      "items": {
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "token"],
        "properties": {
          "name": {
            "type": "string",
            "maxLength": 64,
            "pattern": "^[-A-Za-z0-9_.]+$",
            "description": "a name of letters, digits, '-', '_' or '.'"
          },
          "token": { "$ref": "#/definitions/secret_ref" }
        }
      }
    },
    "alipay": {
      "type": "object",
      "additionalProperties": false,
      "required": ["apps"],
      "properties": {
        "apps": {
          "type": "array",
          "minItems": 1,
          "items": {
            "type": "object",
            "additionalProperties": false,
            "required": ["app_id"],
            "properties": {
              "app_id": { "$ref": "#/definitions/digits" },
              "seller_id": { "$ref": "#/definitions/digits" },
              "sign_type": { "enum": ["RSA2", "RSA"] },
              "alipay_public_key_file": { "$ref": "#/definitions/file_path" },
              "alipay_public_cert_file": { "$ref": "#/definitions/file_path" },
              "alipay_root_cert_file": { "$ref": "#/definitions/file_path" },
              "previous_alipay_public_key_file": { "$ref": "#/definitions/file_path" },
              "previous_alipay_public_cert_file": { "$ref": "#/definitions/file_path" },
              "app_private_key": { "$ref": "#/definitions/secret_ref" },
              "app_public_cert_file": { "$ref": "#/definitions/file_path" },
              "gateway_url": { "$ref": "#/definitions/http_url" },
              "download_certificates": {
                "type": "boolean",
                "description": "download Alipay's re-issued certificate with alipay.open.app.alipaycert.download"
              }
            }
          }
        }
      }
    },
    "wechatpay": {
      "type": "object",
      "additionalProperties": false,
      "required": ["merchants"],
      "properties": {
        "merchants": {
          "type": "array",
          "minItems": 1,
          "items": {
            "type": "object",
            "additionalProperties": false,
            "required": ["mchid", "appid", "apiv3_key"],
            "properties": {
              "mchid": { "$ref": "#/definitions/digits" },
              "appid": { "type": "string", "minLength": 1, "maxLength": 64 },
              "other_appids": {
                "type": "array",
                "uniqueItems": true,
                "items": { "type": "string", "minLength": 1, "maxLength": 64 }
              },
              "apiv3_key": { "$ref": "#/definitions/secret_ref" },
              "public_key_id": { "type": "string", "minLength": 1, "maxLength": 128 },
              "public_key_file": { "$ref": "#/definitions/file_path" },
              "platform_certificates": {
                "type": "array",
                "minItems": 1,
                "items": { "$ref": "#/definitions/file_path" }
              },
              "apiv2_key": { "$ref": "#/definitions/secret_ref" },
              "merchant_private_key": { "$ref": "#/definitions/secret_ref" },
              "merchant_serial_no": {
                "type": "string",
                "pattern": "^[0-9A-Fa-f]{1,64}$",
                "description": "the merchant API certificate's serial number in hex"
              },
              "api_url": { "$ref": "#/definitions/http_url" },
              "download_certificates": {
                "type": "boolean",
                "description": "download the platform certificates from GET /v3/certificates"
              }
            }
          }
        }
      }
    },
    "crm": {
      "type": "object",
      "additionalProperties": false,
      "required": ["url"],
      "properties": {
        "url": {
          "type": "string",
          "pattern": "^https?://[^/]",
          "description": "an http:// or https:// URL"
        },
        "secret": { "$ref": "#/definitions/secret_ref" },
        "secrets": {
          "type": "array",
          "minItems": 1,
          "maxItems": 2,
          "items": { "$ref": "#/definitions/secret_ref" }
        },
        "ca_file": { "$ref": "#/definitions/file_path" },
        "timeout_ms": { "$ref": "#/definitions/duration_ms" },
        "concurrency": { "type": "integer", "minimum": 1, "maximum": 4096 },
        "retry_schedule_s": {
          "type": "array",
          "minItems": 1,
          "maxItems": 64,
          "items": { "type": "integer", "minimum": 1, "maximum": 604800 }
        },
        "lease_s": { "type": "integer", "minimum": 1, "maximum": 86400 },
        "outbox_retention_s": { "type": "integer", "minimum": 0, "maximum": 315360000 }
      }
    },
    "provider_query": {
      "type": "object",
      "additionalProperties": false,
      "properties": {
        "after_s": { "type": "integer", "minimum": 1, "maximum": 604800 },
        "until_s": { "type": "integer", "minimum": 1, "maximum": 2592000 },
        "max_gap_s": { "type": "integer", "minimum": 1, "maximum": 604800 },
        "interval_s": { "type": "integer", "minimum": 1, "maximum": 86400 },
        "batch": { "type": "integer", "minimum": 1, "maximum": 10000 },
        "concurrency": { "type": "integer", "minimum": 1, "maximum": 256 },
        "timeout_ms": { "type": "integer", "minimum": 1, "maximum": 60000 },
        "ca_file": { "$ref": "#/definitions/file_path" }
      }
    },
    "log": {
      "type": "object",
      "additionalProperties": false,
      "properties": {
        "level": { "enum": ["debug", "info", "warning", "error"] }
      }
    }
  }
})json";

}  // namespace paybridge::config
