// The one export table of ferry_native.node. Each Init* lives next to the syscalls it wraps;
// src/native/binding.ts declares every export with its types.
#include <napi.h>

namespace ferry {
void InitPtrace(Napi::Env env, Napi::Object exports);
void InitInject(Napi::Env env, Napi::Object exports);
void InitProcess(Napi::Env env, Napi::Object exports);
void InitMemory(Napi::Env env, Napi::Object exports);
void InitFiles(Napi::Env env, Napi::Object exports);
void InitCpu(Napi::Env env, Napi::Object exports);
void InitSeccomp(Napi::Env env, Napi::Object exports);
void InitPipes(Napi::Env env, Napi::Object exports);
void InitUnix(Napi::Env env, Napi::Object exports);
void InitTty(Napi::Env env, Napi::Object exports);
void InitAnonfd(Napi::Env env, Napi::Object exports);
void InitInet(Napi::Env env, Napi::Object exports);
void InitNotify(Napi::Env env, Napi::Object exports);
void InitSockdiag(Napi::Env env, Napi::Object exports);
void InitUffd(Napi::Env env, Napi::Object exports);
void InitDigest(Napi::Env env, Napi::Object exports);
void InitMmHold(Napi::Env env, Napi::Object exports);
}  // namespace ferry

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  ferry::InitPtrace(env, exports);
  ferry::InitInject(env, exports);
  ferry::InitProcess(env, exports);
  ferry::InitMemory(env, exports);
  ferry::InitFiles(env, exports);
  ferry::InitCpu(env, exports);
  ferry::InitSeccomp(env, exports);
  ferry::InitPipes(env, exports);
  ferry::InitUnix(env, exports);
  ferry::InitTty(env, exports);
  ferry::InitAnonfd(env, exports);
  ferry::InitInet(env, exports);
  ferry::InitNotify(env, exports);
  ferry::InitSockdiag(env, exports);
  ferry::InitUffd(env, exports);
  ferry::InitDigest(env, exports);
  ferry::InitMmHold(env, exports);
  return exports;
}

NODE_API_MODULE(ferry_native, Init)
