// Digests of page data: the sha256 of each page of a buffer (docs/image-format.md,
// `pageDigests`), which a chunk of a paged entry is verified by (src/image/chunks.ts).
//
// One sha256 per page from JavaScript costs a Hash object and a call into OpenSSL each: half
// the speed of hashing the same bytes whole. Here it is one call per buffer. The hash is
// OpenSSL's, which Node exports to addons (nodejs.org/api/addons.html, "Linking to libraries
// included with Node.js"); it is looked up when first needed (dlsym), so a Node that does not
// export it still loads this addon: pageDigests then says false and the caller hashes in
// JavaScript.
#include <dlfcn.h>
#include <napi.h>

#include <stddef.h>
#include <stdint.h>

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

bool ArgBytes(const Napi::CallbackInfo& info, size_t i, uint8_t** data, size_t* len) {
  if (info.Length() <= i || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowType(info.Env(), "pageDigests(data: Uint8Array, out: Uint8Array, at: number, pageSize: number)");
    return false;
  }
  Napi::Uint8Array a = info[i].As<Napi::Uint8Array>();
  *data = a.Data();
  *len = a.ByteLength();
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
  if (sha == nullptr) return Napi::Boolean::New(info.Env(), false);
  alignas(16) unsigned char ctx[256];
  for (size_t p = 0; p < n; p++) {
    size_t off = p * page;
    size_t piece = len - off < static_cast<size_t>(page) ? len - off : static_cast<size_t>(page);
    if (!sha->init(ctx) || !sha->update(ctx, data + off, piece) || !sha->final(out + at + p * 32, ctx)) {
      return Napi::Boolean::New(info.Env(), false);
    }
  }
  return Napi::Boolean::New(info.Env(), true);
}

}  // namespace

void InitDigest(Napi::Env env, Napi::Object exports) {
  exports.Set("pageDigests", Napi::Function::New(env, PageDigests));
}

}  // namespace ferry
