// Digests of page data: the sha256 of each page of a buffer (docs/image-format.md,
// `pageDigests`), which a chunk of a paged entry is verified by (src/image/chunks.ts); and the
// image writer's sha256 of big entries, computed on libuv's thread pool (src/image/writer.ts
// HashPool) so that several chunks hash at once while the JS thread reads the next.
//
// One sha256 per page from JavaScript costs a Hash object and a call into OpenSSL each: half
// the speed of hashing the same bytes whole. Here it is one call per buffer. The hash is
// OpenSSL's, which Node exports to addons (nodejs.org/api/addons.html, "Linking to libraries
// included with Node.js"); it is looked up when first needed (dlsym), so a Node that does not
// export it still loads this addon: pageDigests then says false and the caller hashes in
// JavaScript.
#include <dlfcn.h>
#include <errno.h>
#include <napi.h>
#include <string.h>
#include <unistd.h>

#include <stddef.h>
#include <stdint.h>

#include <string>

#include "errors.h"

namespace ferry {
namespace {

// OpenSSL's SHA256_Init(3), SHA256_Update and SHA256_Final: the digest itself, without the
// algorithm fetch that its one-shot SHA256() makes on every call in OpenSSL 3 (a sixth of the
// time, per 4 KiB page). Its SHA256_CTX is 112 bytes (openssl/sha.h); room for more is given.
struct Sha256 {
  int (*init)(void* ctx);
  int (*update)(void* ctx, const void* data, size_t len);
  int (*final)(unsigned char* md, void* ctx);
};

const Sha256* Sha256Fns() {
  // The same answer on every thread; a static's initialisation is thread-safe.
  static const Sha256 fns{
      reinterpret_cast<int (*)(void*)>(dlsym(RTLD_DEFAULT, "SHA256_Init")),
      reinterpret_cast<int (*)(void*, const void*, size_t)>(dlsym(RTLD_DEFAULT, "SHA256_Update")),
      reinterpret_cast<int (*)(unsigned char*, void*)>(dlsym(RTLD_DEFAULT, "SHA256_Final")),
  };
  return fns.init != nullptr && fns.update != nullptr && fns.final != nullptr ? &fns : nullptr;
}

bool ArgBytes(const Napi::CallbackInfo& info, size_t i, uint8_t** data, size_t* len,
              const char* usage = "pageDigests(data: Uint8Array, out: Uint8Array, at: number, pageSize: number)") {
  if (info.Length() <= i || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowType(info.Env(), usage);
    return false;
  }
  Napi::Uint8Array a = info[i].As<Napi::Uint8Array>();
  *data = a.Data();
  *len = a.ByteLength();
  return true;
}

// Each page's sha256 of data into out (32 bytes a page of `page` bytes); false without
// OpenSSL's SHA-256. Runs on any thread.
bool DigestPages(const Sha256* sha, const uint8_t* data, size_t len, uint8_t* out, size_t page) {
  alignas(16) unsigned char ctx[256];
  for (size_t off = 0, p = 0; off < len; off += page, p++) {
    size_t piece = len - off < page ? len - off : page;
    if (!sha->init(ctx) || !sha->update(ctx, data + off, piece) || !sha->final(out + p * 32, ctx)) return false;
  }
  return true;
}

// pageDigests(data, out, at, pageSize) -> boolean: the sha256 of each pageSize bytes of data
// (the last piece may be shorter), 32 bytes each, into out from `at`; false without OpenSSL's
// SHA-256 here (what was written then is not to be used). Either may be a view of a
// SharedArrayBuffer (a loader's slot).
Napi::Value PageDigests(const Napi::CallbackInfo& info) {
  uint8_t *data, *out;
  size_t len, outLen;
  int64_t at, page;
  if (!ArgBytes(info, 0, &data, &len) || !ArgBytes(info, 1, &out, &outLen) || !ArgInt(info, 2, &at) || !ArgInt(info, 3, &page)) return {};
  if (page < 1 || at < 0) {
    ThrowType(info.Env(), "pageDigests: pageSize must be positive, at not negative");
    return {};
  }
  size_t n = (len + page - 1) / page;
  if (static_cast<size_t>(at) > outLen || (outLen - at) / 32 < n) {
    ThrowType(info.Env(), "pageDigests: out has no room for a digest of each page");
    return {};
  }
  const Sha256* sha = Sha256Fns();
  return Napi::Boolean::New(info.Env(), sha != nullptr && DigestPages(sha, data, len, out + at, static_cast<size_t>(page)));
}

// A SHA256_CTX lives in memory of the caller's (sha256Init): room for it, and aligned as
// OpenSSL's own allocation would be.
constexpr size_t kStateBytes = 256;
constexpr uintptr_t kStateAlign = 16;

bool ArgState(const Napi::CallbackInfo& info, const char* usage, uint8_t** state) {
  size_t len;
  if (!ArgBytes(info, 0, state, &len, usage)) return false;
  if (len < kStateBytes || reinterpret_cast<uintptr_t>(*state) % kStateAlign != 0) {
    ThrowType(info.Env(), std::string(usage) + ": state must be 256 bytes, 16-byte aligned");
    return false;
  }
  return true;
}

// sha256Init(state) -> boolean: starts a sha256 in `state` (a Uint8Array of its own, 256
// bytes); false without OpenSSL's SHA-256 here (the caller hashes in JavaScript).
Napi::Value Sha256InitJs(const Napi::CallbackInfo& info) {
  uint8_t* state;
  if (!ArgState(info, "sha256Init(state: Uint8Array)", &state)) return {};
  const Sha256* sha = Sha256Fns();
  return Napi::Boolean::New(info.Env(), sha != nullptr && sha->init(state) == 1);
}

// One sha256Update: hashes on a thread of libuv's pool, the state and the data held (kept
// from the garbage collector) until it is done.
class UpdateWork : public Napi::AsyncWorker {
 public:
  UpdateWork(Napi::Env env, const Sha256* sha, Napi::Uint8Array state, Napi::Uint8Array data)
      : Napi::AsyncWorker(env, "ferry.sha256Update"), deferred_(Napi::Promise::Deferred::New(env)), sha_(sha),
        state_(state.Data()), data_(data.Data()), len_(data.ByteLength()),
        stateRef_(Napi::Persistent(state)), dataRef_(Napi::Persistent(data)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    if (sha_->update(state_, data_, len_) != 1) SetError("SHA256_Update failed");
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  const Sha256* sha_;
  void* state_;
  const uint8_t* data_;
  size_t len_;
  Napi::Reference<Napi::Uint8Array> stateRef_;
  Napi::Reference<Napi::Uint8Array> dataRef_;
};

// sha256Update(state, data) -> Promise<void>: adds `data` to the sha256 in `state`, on libuv's
// thread pool. Neither may be changed, nor `state` given to another call, until it settles
// (either may be a view of a SharedArrayBuffer: the chunk buffers of a checkpoint).
Napi::Value Sha256UpdateJs(const Napi::CallbackInfo& info) {
  uint8_t *state, *data;
  size_t len;
  if (!ArgState(info, "sha256Update(state: Uint8Array, data: Uint8Array)", &state) || !ArgBytes(info, 1, &data, &len, "sha256Update(state: Uint8Array, data: Uint8Array)")) return {};
  const Sha256* sha = Sha256Fns();
  if (sha == nullptr) {
    ThrowType(info.Env(), "sha256Update: no SHA-256 in this Node (sha256Init said so)");
    return {};
  }
  auto* work = new UpdateWork(info.Env(), sha, info[0].As<Napi::Uint8Array>(), info[1].As<Napi::Uint8Array>());
  Napi::Promise promise = work->Promise();
  work->Queue();  // deletes itself once settled
  return promise;
}

// One writeAndDigest: pwrite(2)s pieces of a buffer into a file, then takes the sha256 of each
// page of the buffer, on a thread of libuv's pool; the buffer, the pieces and `out` are held
// until it is done.
class WriteDigestWork : public Napi::AsyncWorker {
 public:
  WriteDigestWork(Napi::Env env, int fd, Napi::Uint8Array data, Napi::Float64Array writes, Napi::Uint8Array out)
      : Napi::AsyncWorker(env, "ferry.writeAndDigest"), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd),
        data_(data.Data()), len_(data.ByteLength()), writes_(writes.Data()), nWrites_(writes.ElementLength() / 3),
        out_(out.Data()), outLen_(out.ByteLength()),
        dataRef_(Napi::Persistent(data)), writesRef_(Napi::Persistent(writes)), outRef_(Napi::Persistent(out)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    for (size_t i = 0; i < nWrites_; i++) {
      size_t from = static_cast<size_t>(writes_[3 * i]), len = static_cast<size_t>(writes_[3 * i + 1]);
      off_t pos = static_cast<off_t>(writes_[3 * i + 2]);
      for (size_t done = 0; done < len;) {
        ssize_t n = pwrite(fd_, data_ + from + done, len - done, pos + static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          err_ = n < 0 ? errno : EIO;  // a write of nothing: the file took no more
          return;
        }
        done += static_cast<size_t>(n);
      }
    }
    const Sha256* sha = Sha256Fns();
    digested_ = outLen_ > 0 && sha != nullptr && DigestPages(sha, data_, len_, out_, kPage);
  }
  void OnOK() override {
    if (err_ == 0) return deferred_.Resolve(Napi::Boolean::New(Env(), digested_));
    const char* name = strerrorname_np(err_);
    std::string code = name ? name : "E" + std::to_string(err_);
    Napi::Error e = Napi::Error::New(Env(), code + ": " + strerror(err_) + ", pwrite");
    e.Set("code", Napi::String::New(Env(), code));
    e.Set("errno", Napi::Number::New(Env(), err_));
    e.Set("syscall", Napi::String::New(Env(), "pwrite"));
    deferred_.Reject(e.Value());
  }

 private:
  static constexpr size_t kPage = 4096;
  Napi::Promise::Deferred deferred_;
  int fd_;
  const uint8_t* data_;
  size_t len_;
  const double* writes_;
  size_t nWrites_;
  uint8_t* out_;
  size_t outLen_;
  int err_ = 0;
  bool digested_ = false;
  Napi::Reference<Napi::Uint8Array> dataRef_;
  Napi::Reference<Napi::Float64Array> writesRef_;
  Napi::Reference<Napi::Uint8Array> outRef_;
};

// writeAndDigest(fd, data, writes, out) -> Promise<boolean>: on libuv's thread pool, writes
// each piece of `data` that `writes` names ([offset in data, length, file position], ...,
// all within data) with pwrite(2) until whole, then, when `out` has room for a digest of each
// 4 KiB page of `data` (32 bytes each), puts their sha256 there: true once they are taken
// (false: none asked, or no OpenSSL SHA-256 here). Rejects with the errno of a failed write
// (EIO for one that wrote nothing). None of the three may change until it settles.
Napi::Value WriteAndDigestJs(const Napi::CallbackInfo& info) {
  const char* usage = "writeAndDigest(fd: number, data: Uint8Array, writes: Float64Array, out: Uint8Array)";
  int64_t fd;
  uint8_t *data, *out;
  size_t len, outLen;
  if (!ArgInt(info, 0, &fd) || !ArgBytes(info, 1, &data, &len, usage) || !ArgBytes(info, 3, &out, &outLen, usage)) return {};
  double fdArg = info[0].As<Napi::Number>().DoubleValue();
  if (!(fdArg >= -1 && fdArg <= INT32_MAX) || fdArg != static_cast<double>(fd)) {
    ThrowType(info.Env(), "writeAndDigest: fd must be a descriptor, or -1 with no writes");
    return {};
  }
  if (info.Length() < 3 || !info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    ThrowType(info.Env(), usage);
    return {};
  }
  Napi::Float64Array writes = info[2].As<Napi::Float64Array>();
  if (writes.ElementLength() % 3 != 0) {
    ThrowType(info.Env(), "writeAndDigest: writes are [offset, length, position] triples");
    return {};
  }
  for (size_t i = 0; i < writes.ElementLength(); i += 3) {
    double from = writes[i], n = writes[i + 1], pos = writes[i + 2];
    if (!(from >= 0) || !(n >= 0) || !(pos >= 0) || from + n > static_cast<double>(len) || pos > 9.0e15) {
      ThrowType(info.Env(), "writeAndDigest: a write lies outside the data or the file");
      return {};
    }
  }
  if (outLen > 0 && outLen / 32 < (len + 4095) / 4096) {
    ThrowType(info.Env(), "writeAndDigest: out has no room for a digest of each page");
    return {};
  }
  auto* work = new WriteDigestWork(info.Env(), static_cast<int>(fd), info[1].As<Napi::Uint8Array>(), writes, info[3].As<Napi::Uint8Array>());
  Napi::Promise promise = work->Promise();
  work->Queue();  // deletes itself once settled
  return promise;
}

// sha256Final(state, out) -> undefined: the digest (32 bytes) into `out`; `state` is spent.
Napi::Value Sha256FinalJs(const Napi::CallbackInfo& info) {
  uint8_t *state, *out;
  size_t outLen;
  if (!ArgState(info, "sha256Final(state: Uint8Array, out: Uint8Array)", &state) || !ArgBytes(info, 1, &out, &outLen, "sha256Final(state: Uint8Array, out: Uint8Array)")) return {};
  const Sha256* sha = Sha256Fns();
  if (outLen < 32 || sha == nullptr) {
    ThrowType(info.Env(), "sha256Final: out must have room for 32 bytes, and sha256Init have said true");
    return {};
  }
  if (sha->final(out, state) != 1) ThrowType(info.Env(), "sha256Final: SHA256_Final failed");
  return info.Env().Undefined();
}

}  // namespace

void InitDigest(Napi::Env env, Napi::Object exports) {
  exports.Set("pageDigests", Napi::Function::New(env, PageDigests));
  exports.Set("sha256Init", Napi::Function::New(env, Sha256InitJs));
  exports.Set("sha256Update", Napi::Function::New(env, Sha256UpdateJs));
  exports.Set("sha256Final", Napi::Function::New(env, Sha256FinalJs));
  exports.Set("writeAndDigest", Napi::Function::New(env, WriteAndDigestJs));
}

}  // namespace ferry
