// errno -> JS error objects. No syscalls of its own.
#include "errors.h"

#include <string.h>

namespace ferry {

void ThrowErrno(Napi::Env env, const char* syscall, int err, const std::string& detail) {
  const char* name = strerrorname_np(err);
  std::string code = name ? name : "E" + std::to_string(err);
  std::string msg = code + ": " + strerror(err) + ", " + syscall;
  if (!detail.empty()) msg += " (" + detail + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  e.ThrowAsJavaScriptException();
}

void ThrowType(Napi::Env env, const std::string& message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
}

bool ArgInt(const Napi::CallbackInfo& info, size_t i, int64_t* out) {
  if (i >= info.Length() || !info[i].IsNumber()) {
    ThrowType(info.Env(), "argument " + std::to_string(i) + " must be a number");
    return false;
  }
  *out = info[i].As<Napi::Number>().Int64Value();
  return true;
}

bool ArgU64(const Napi::CallbackInfo& info, size_t i, uint64_t* out) {
  if (i < info.Length() && info[i].IsBigInt()) {
    bool lossless = true;
    *out = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
    return true;
  }
  if (i < info.Length() && info[i].IsNumber()) {
    *out = static_cast<uint64_t>(info[i].As<Napi::Number>().Int64Value());
    return true;
  }
  ThrowType(info.Env(), "argument " + std::to_string(i) + " must be a bigint or number");
  return false;
}

bool ArgBuffer(const Napi::CallbackInfo& info, size_t i, Napi::Buffer<uint8_t>* out) {
  if (i >= info.Length() || !info[i].IsBuffer()) {
    ThrowType(info.Env(), "argument " + std::to_string(i) + " must be a Buffer");
    return false;
  }
  *out = info[i].As<Napi::Buffer<uint8_t>>();
  return true;
}

}  // namespace ferry
