// CPU facts an image depends on.
//
// xgetbv(0) reads XCR0: the set of XSAVE state components the OS enabled (x87, SSE, AVX,
// AVX-512 ...). A task's XSAVE area from one CPU can only be loaded where every component it
// uses is enabled.
#include <napi.h>

#include <stdint.h>

namespace ferry {
namespace {

Napi::Value Xgetbv(const Napi::CallbackInfo& info) {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return Napi::BigInt::New(info.Env(), (static_cast<uint64_t>(hi) << 32) | lo);
}

}  // namespace

void InitCpu(Napi::Env env, Napi::Object exports) {
  exports.Set("xgetbv", Napi::Function::New(env, Xgetbv));
}

}  // namespace ferry
