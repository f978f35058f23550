#include "config/detail/schema_check.hpp"

#include "config/schema.hpp"

#include <rapidjson/pointer.h>
#include <rapidjson/schema.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <sstream>
#include <stdexcept>

namespace paybridge::config::detail {

namespace {

using rapidjson::Document;
using rapidjson::SizeType;
using rapidjson::Value;
using Allocator = Document::AllocatorType;

// ---------------------------------------------------------------------------------------------
// JSON pointers and values as text

std::string pointer_text(const rapidjson::Pointer& p)
{
    rapidjson::StringBuffer sb;
    p.Stringify(sb);
    return {sb.GetString(), sb.GetSize()};
}

std::string json_text(const Value& v)
{
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> writer(sb);
    v.Accept(writer);
    return {sb.GetString(), sb.GetSize()};
}

std::string_view str(const Value& v) { return {v.GetString(), v.GetStringLength()}; }

std::string type_phrase(const Value& v)
{
    if (v.IsNull()) {
        return "null";
    }
    if (v.IsBool()) {
        return "a boolean";
    }
    if (v.IsObject()) {
        return "an object";
    }
    if (v.IsArray()) {
        return "an array";
    }
    if (v.IsString()) {
        return "a string";
    }
    return v.IsDouble() ? "a number with a fraction" : "an integer";
}

std::string schema_type_phrase(std::string_view type)
{
    if (type == "integer" || type == "object" || type == "array") {
        return "an " + std::string(type);
    }
    if (type == "null") {
        return "null";
    }
    return "a " + std::string(type);
}

// ---------------------------------------------------------------------------------------------
// Phase 2: duplicate keys

void find_duplicates(const Value& v, const std::string& ptr, Problems& problems)
{
    if (v.IsObject()) {
        std::set<std::string_view> names;
        for (const auto& m : v.GetObject()) {
            const std::string p = child(ptr, str(m.name));
            if (!names.insert(str(m.name)).second) {
                problems.add(p, "duplicate key");
            }
            find_duplicates(m.value, p, problems);
        }
    } else if (v.IsArray()) {
        for (SizeType i = 0; i < v.Size(); ++i) {
            find_duplicates(v[i], child(ptr, i), problems);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 3: schema validation that reports every violation
//
// RapidJSON 1.1 (Debian 12's version) has no GetError() and no "continue on error" flag: its
// validator stops at the first violation and reports one (schema pointer, keyword, document
// pointer). To report them all we validate repeatedly. Before the first pass the schema is
// *specialised* to the document: local $refs are inlined and an "items" schema is repeated once
// per element of the instance array (the tuple form of "items"), so that every schema node governs
// exactly one place in the document. After each reported violation the offending keyword is
// removed from that one node ("relaxed") and validation runs again, until the document passes.
// Every pass removes a keyword, so this terminates; a configuration has a few hundred keywords at
// most and each pass takes microseconds.

class SchemaChecker {
public:
    explicit SchemaChecker(const Document& document) : document_(document)
    {
        schema_.Parse(kConfigSchema.data(), kConfigSchema.size());
        if (schema_.HasParseError()) {
            throw std::logic_error("config/schema.cpp: kConfigSchema is not valid JSON");
        }
    }

    void run(Problems& problems)
    {
        Document specialised;
        Value root = specialise(schema_, &document_, specialised.GetAllocator(), 0);
        static_cast<Value&>(specialised) = root;

        for (;;) {
            std::string keyword;
            std::string schema_ptr;
            std::string document_ptr;
            {
                rapidjson::SchemaDocument schema_document(specialised);
                rapidjson::SchemaValidator validator(schema_document);
                if (document_.Accept(validator)) {
                    return;
                }
                keyword = validator.GetInvalidSchemaKeyword();
                schema_ptr = pointer_text(validator.GetInvalidSchemaPointer());
                document_ptr = pointer_text(validator.GetInvalidDocumentPointer());
            }
            Value* node = rapidjson::Pointer(schema_ptr.c_str()).Get(specialised);
            if (node == nullptr || !node->IsObject()) {
                throw std::logic_error("schema validator reported an unknown schema node " + schema_ptr);
            }
            report(*node, keyword, document_ptr, problems);
            if (!relax(*node, keyword)) {
                throw std::logic_error("schema keyword " + keyword + " at " + schema_ptr + " cannot be relaxed");
            }
        }
    }

private:
    Value specialise(const Value& schema, const Value* instance, Allocator& a, int depth) const
    {
        if (depth > 64) {
            throw std::logic_error("config schema: $ref recursion");
        }
        if (!schema.IsObject()) {
            return Value(schema, a);
        }
        auto ref = schema.FindMember("$ref");
        if (ref != schema.MemberEnd() && ref->value.IsString()) {
            const std::string_view target = str(ref->value);
            if (!target.starts_with("#/")) {
                throw std::logic_error("config schema: only local $refs are supported");
            }
            const Value* resolved = rapidjson::Pointer(std::string(target.substr(1)).c_str()).Get(schema_);
            if (resolved == nullptr) {
                throw std::logic_error("config schema: dangling $ref " + std::string(target));
            }
            return specialise(*resolved, instance, a, depth + 1);
        }
        Value out(rapidjson::kObjectType);
        for (const auto& m : schema.GetObject()) {
            const std::string_view name = str(m.name);
            if (name == "definitions") {
                continue;
            }
            Value key(m.name, a);
            if (name == "properties" && m.value.IsObject()) {
                Value properties(rapidjson::kObjectType);
                for (const auto& p : m.value.GetObject()) {
                    const Value* sub = nullptr;
                    if (instance != nullptr && instance->IsObject()) {
                        auto it = instance->FindMember(p.name);
                        sub = it == instance->MemberEnd() ? nullptr : &it->value;
                    }
                    properties.AddMember(Value(p.name, a), specialise(p.value, sub, a, depth + 1), a);
                }
                out.AddMember(key, properties, a);
            } else if (name == "items" && m.value.IsObject() && instance != nullptr && instance->IsArray()) {
                Value items(rapidjson::kArrayType);
                for (const Value& element : instance->GetArray()) {
                    items.PushBack(specialise(m.value, &element, a, depth + 1), a);
                }
                out.AddMember(key, items, a);
            } else if (name == "items" && m.value.IsObject()) {
                out.AddMember(key, specialise(m.value, nullptr, a, depth + 1), a);
            } else {
                out.AddMember(key, Value(m.value, a), a);
            }
        }
        return out;
    }

    static std::string number(const Value& v)
    {
        if (v.IsInt64()) {
            return std::to_string(v.GetInt64());
        }
        if (v.IsUint64()) {
            return std::to_string(v.GetUint64());
        }
        std::ostringstream os;
        os << v.GetDouble();
        return os.str();
    }

    static bool flag(const Value& node, const char* name)
    {
        auto it = node.FindMember(name);
        return it != node.MemberEnd() && it->value.IsBool() && it->value.GetBool();
    }

    const Value* instance_at(const std::string& ptr) const
    {
        return rapidjson::Pointer(ptr.c_str()).Get(document_);
    }

    void report(const Value& node, const std::string& keyword, const std::string& ptr, Problems& problems) const
    {
        const Value* value = instance_at(ptr);
        auto kw = node.FindMember(keyword.c_str());
        const Value* arg = kw == node.MemberEnd() ? nullptr : &kw->value;

        if (keyword == "required" && arg != nullptr && arg->IsArray() && value != nullptr && value->IsObject()) {
            for (const Value& name : arg->GetArray()) {
                if (name.IsString() && !value->HasMember(name)) {
                    problems.add(child(ptr, str(name)), "required property missing");
                }
            }
            return;
        }
        if (keyword == "additionalProperties") {
            // Reported from the validator's Key handler: the pointer already names the key.
            const rapidjson::Pointer key_ptr(ptr.c_str());
            if (key_ptr.GetTokenCount() == 0) {
                problems.add(ptr, "unknown property");
                return;
            }
            const rapidjson::Pointer object_ptr(key_ptr.GetTokens(), key_ptr.GetTokenCount() - 1);
            const std::string object_text = pointer_text(object_ptr);
            const Value* object = object_ptr.Get(document_);
            auto properties = node.FindMember("properties");
            if (object != nullptr && object->IsObject()) {
                for (const auto& m : object->GetObject()) {
                    const bool known = properties != node.MemberEnd() && properties->value.IsObject() &&
                                       properties->value.HasMember(m.name);
                    if (!known) {
                        problems.add(child(object_text, str(m.name)), "unknown property");
                    }
                }
                return;
            }
            problems.add(ptr, "unknown property");
            return;
        }

        std::string what;
        if (keyword == "type" && arg != nullptr) {
            if (arg->IsString()) {
                what = "must be " + schema_type_phrase(str(*arg));
            } else if (arg->IsArray()) {
                what = "must be";
                const char* sep = " ";
                for (const Value& t : arg->GetArray()) {
                    if (t.IsString()) {
                        what += sep + schema_type_phrase(str(t));
                        sep = " or ";
                    }
                }
            }
            if (value != nullptr) {
                what += ", not " + type_phrase(*value);
            }
        } else if (keyword == "minimum" && arg != nullptr && arg->IsNumber()) {
            what = (flag(node, "exclusiveMinimum") ? "must be > " : "must be >= ") + number(*arg);
        } else if (keyword == "maximum" && arg != nullptr && arg->IsNumber()) {
            what = (flag(node, "exclusiveMaximum") ? "must be < " : "must be <= ") + number(*arg);
        } else if (keyword == "minLength" && arg != nullptr && arg->IsNumber()) {
            what = number(*arg) == "1" ? std::string("must not be empty")
                                       : "must be at least " + number(*arg) + " characters long";
        } else if (keyword == "maxLength" && arg != nullptr && arg->IsNumber()) {
            what = "must be at most " + number(*arg) + " characters long";
        } else if (keyword == "minItems" && arg != nullptr && arg->IsNumber()) {
            what = number(*arg) == "1" ? std::string("must not be empty")
                                       : "must have at least " + number(*arg) + " items";
        } else if (keyword == "maxItems" && arg != nullptr && arg->IsNumber()) {
            what = "must have at most " + number(*arg) + " items";
        } else if (keyword == "pattern" && arg != nullptr && arg->IsString()) {
            auto description = node.FindMember("description");
            what = description != node.MemberEnd() && description->value.IsString()
                       ? "must be " + std::string(str(description->value))
                       : "must match the pattern " + json_text(*arg);
        } else if (keyword == "enum" && arg != nullptr && arg->IsArray()) {
            what = "must be one of";
            const char* sep = " ";
            for (const Value& option : arg->GetArray()) {
                what += sep + json_text(option);
                sep = ", ";
            }
        }
        if (what.empty()) {
            what = "violates the schema keyword \"" + keyword + "\"";
        }
        problems.add(ptr, what);
    }

    static bool relax(Value& node, const std::string& keyword)
    {
        const bool removed = node.EraseMember(keyword.c_str());
        if (keyword == "minimum") {
            node.EraseMember("exclusiveMinimum");
        } else if (keyword == "maximum") {
            node.EraseMember("exclusiveMaximum");
        }
        return removed;
    }

    const Document& document_;
    Document schema_;
};

}  // namespace

void find_duplicate_keys(const rapidjson::Value& value, Problems& problems) { find_duplicates(value, "", problems); }

void check_schema(const rapidjson::Document& document, Problems& problems) { SchemaChecker(document).run(problems); }

}  // namespace paybridge::config::detail
