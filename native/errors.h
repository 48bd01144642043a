// Errors crossing into JavaScript: shaped like Node's fs errors (code, errno, syscall).
#pragma once
#include <napi.h>
#include <string>

namespace ferry {

// Throws a JS Error for `err` (an errno value) raised by `syscall`, with .code ("EPERM"),
// .errno (positive) and .syscall set. `detail` is appended to the message when given.
void ThrowErrno(Napi::Env env, const char* syscall, int err, const std::string& detail = "");

// Throws a TypeError (bad arguments from TS: a programming error, not a runtime condition).
void ThrowType(Napi::Env env, const std::string& message);

// Argument helpers; on failure they throw and return false.
bool ArgInt(const Napi::CallbackInfo& info, size_t i, int64_t* out);
bool ArgU64(const Napi::CallbackInfo& info, size_t i, uint64_t* out);  // number or bigint
bool ArgBuffer(const Napi::CallbackInfo& info, size_t i, Napi::Buffer<uint8_t>* out);

}  // namespace ferry
