// Anonymous-inode files and memfds: creating them with a given state and reading the state
// only the open file can tell.
//
// Wraps eventfd2(2) (+ write(2) of the counter: eventfd's initval is only 32 bits wide),
// signalfd4(2) (mask as the kernel's 8-byte sigset), timerfd_create(2), timerfd_settime(2),
// timerfd_gettime(2) with clock_gettime(2) of the timer's clock, read(2) of a timerfd after
// poll(2) with a zero timeout (the real expiration count; reading resets it to 0 and, for a
// periodic timer, re-arms it at the next period), ioctl(2) TFD_IOC_SET_TICKS (sets the
// expiration count; CONFIG_CHECKPOINT_RESTORE), memfd_create(2), and fcntl(2) F_GET_SEALS /
// F_ADD_SEALS.
#include <napi.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "errors.h"

#ifndef TFD_IOC_SET_TICKS
#define TFD_IOC_SET_TICKS _IOW('T', 0, uint64_t)
#endif

namespace ferry {
namespace {

Napi::Value Fd(Napi::Env env, long fd, const char* name, const std::string& detail = "") {
  if (fd < 0) {
    ThrowErrno(env, name, errno, detail);
    return {};
  }
  return Napi::Number::New(env, static_cast<double>(fd));
}

// eventfdCreate(count: bigint, flags) -> fd with the counter set (EFD_CLOEXEC always added).
Napi::Value EventfdCreate(const Napi::CallbackInfo& info) {
  uint64_t count;
  int64_t flags;
  if (!ArgU64(info, 0, &count) || !ArgInt(info, 1, &flags)) return {};
  long fd = syscall(SYS_eventfd2, 0, static_cast<int>(flags) | O_CLOEXEC);
  if (fd < 0) return Fd(info.Env(), fd, "eventfd2");
  // A fresh counter is 0, so any value up to 0xfffffffffffffffe is written without blocking.
  if (count != 0 && write(static_cast<int>(fd), &count, sizeof count) != sizeof count) {
    int err = errno;
    close(static_cast<int>(fd));
    ThrowErrno(info.Env(), "write(eventfd)", err);
    return {};
  }
  return Napi::Number::New(info.Env(), static_cast<double>(fd));
}

// signalfdCreate(mask: bigint, flags) -> fd (SFD_CLOEXEC always added).
Napi::Value SignalfdCreate(const Napi::CallbackInfo& info) {
  uint64_t mask;
  int64_t flags;
  if (!ArgU64(info, 0, &mask) || !ArgInt(info, 1, &flags)) return {};
  long fd = syscall(SYS_signalfd4, -1, &mask, sizeof mask, static_cast<int>(flags) | O_CLOEXEC);
  return Fd(info.Env(), fd, "signalfd4");
}

// timerfdCreate(clock, flags) -> fd (TFD_CLOEXEC always added).
Napi::Value TimerfdCreate(const Napi::CallbackInfo& info) {
  int64_t clock, flags;
  if (!ArgInt(info, 0, &clock) || !ArgInt(info, 1, &flags)) return {};
  int fd = timerfd_create(static_cast<int>(clock), static_cast<int>(flags) | TFD_CLOEXEC);
  return Fd(info.Env(), fd, "timerfd_create", "clock " + std::to_string(clock));
}

// timerfdSettime(fd, flags, valueSec, valueNsec, intervalSec, intervalNsec).
Napi::Value TimerfdSettime(const Napi::CallbackInfo& info) {
  int64_t fd, flags, vs, vn, is, in;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &flags) || !ArgInt(info, 2, &vs) ||
      !ArgInt(info, 3, &vn) || !ArgInt(info, 4, &is) || !ArgInt(info, 5, &in)) return {};
  struct itimerspec it = {{static_cast<time_t>(is), static_cast<long>(in)},
                          {static_cast<time_t>(vs), static_cast<long>(vn)}};
  if (timerfd_settime(static_cast<int>(fd), static_cast<int>(flags), &it, nullptr) < 0) {
    ThrowErrno(info.Env(), "timerfd_settime", errno, "fd " + std::to_string(fd));
    return {};
  }
  return info.Env().Undefined();
}

Napi::Array Pair(Napi::Env env, const struct timespec& ts) {
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, static_cast<double>(ts.tv_sec)));
  a.Set(1u, Napi::Number::New(env, static_cast<double>(ts.tv_nsec)));
  return a;
}

// timerfdGettime(fd, clock) -> {value: [s, ns], interval: [s, ns], now: [s, ns]}: time left,
// period, and the clock's time right after (to turn the time left into an absolute expiry).
Napi::Value TimerfdGettime(const Napi::CallbackInfo& info) {
  int64_t fd, clock;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &clock)) return {};
  struct itimerspec it;
  struct timespec now;
  if (timerfd_gettime(static_cast<int>(fd), &it) < 0) {
    ThrowErrno(info.Env(), "timerfd_gettime", errno, "fd " + std::to_string(fd));
    return {};
  }
  if (clock_gettime(static_cast<clockid_t>(clock), &now) < 0) {
    ThrowErrno(info.Env(), "clock_gettime", errno, "clock " + std::to_string(clock));
    return {};
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("value", Pair(info.Env(), it.it_value));
  o.Set("interval", Pair(info.Env(), it.it_interval));
  o.Set("now", Pair(info.Env(), now));
  return o;
}

// clockGettime(clock) -> bigint nanoseconds: clock_gettime(2) of `clock` as the calling
// thread's time namespace shows it (CLOCK_MONOTONIC, CLOCK_BOOTTIME…).
Napi::Value ClockGettime(const Napi::CallbackInfo& info) {
  int64_t clock;
  if (!ArgInt(info, 0, &clock)) return {};
  struct timespec now;
  if (clock_gettime(static_cast<clockid_t>(clock), &now) < 0) {
    ThrowErrno(info.Env(), "clock_gettime", errno, "clock " + std::to_string(clock));
    return {};
  }
  return Napi::BigInt::New(info.Env(), static_cast<int64_t>(static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec));
}

// timerfdTakeTicks(fd) -> bigint: expirations since the last read (0 when none; never
// blocks). The count is consumed: put it back with timerfdSetTicks.
Napi::Value TimerfdTakeTicks(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  struct pollfd p = {static_cast<int>(fd), POLLIN, 0};
  int r = poll(&p, 1, 0);
  if (r < 0) {
    ThrowErrno(info.Env(), "poll(timerfd)", errno, "fd " + std::to_string(fd));
    return {};
  }
  uint64_t ticks = 0;
  if (r > 0 && (p.revents & POLLIN)) {
    ssize_t n = read(static_cast<int>(fd), &ticks, sizeof ticks);
    // EAGAIN: another reader took them between poll and read (not in a frozen tree).
    if (n < 0 && errno != EAGAIN) {
      ThrowErrno(info.Env(), "read(timerfd)", errno, "fd " + std::to_string(fd));
      return {};
    }
    if (n != sizeof ticks) ticks = 0;
  }
  return Napi::BigInt::New(info.Env(), ticks);
}

// timerfdSetTicks(fd, ticks: bigint): ioctl(TFD_IOC_SET_TICKS).
Napi::Value TimerfdSetTicks(const Napi::CallbackInfo& info) {
  int64_t fd;
  uint64_t ticks;
  if (!ArgInt(info, 0, &fd) || !ArgU64(info, 1, &ticks)) return {};
  if (ioctl(static_cast<int>(fd), TFD_IOC_SET_TICKS, &ticks) < 0) {
    ThrowErrno(info.Env(), "ioctl(TFD_IOC_SET_TICKS)", errno, "fd " + std::to_string(fd));
    return {};
  }
  return info.Env().Undefined();
}

// memfdCreate(name, flags) -> fd (MFD_CLOEXEC always added).
Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  int64_t flags;
  if (info.Length() < 1 || !info[0].IsString()) {
    ThrowType(info.Env(), "memfdCreate(name: string, flags: number)");
    return {};
  }
  std::string name = info[0].As<Napi::String>().Utf8Value();
  if (!ArgInt(info, 1, &flags)) return {};
  long fd = syscall(SYS_memfd_create, name.c_str(), static_cast<unsigned>(flags) | MFD_CLOEXEC);
  return Fd(info.Env(), fd, "memfd_create", name);
}

// getSeals(fd) -> F_SEAL_* bits (EINVAL: the file cannot be sealed).
Napi::Value GetSeals(const Napi::CallbackInfo& info) {
  int64_t fd;
  if (!ArgInt(info, 0, &fd)) return {};
  int r = fcntl(static_cast<int>(fd), F_GET_SEALS);
  if (r < 0) {
    ThrowErrno(info.Env(), "fcntl(F_GET_SEALS)", errno, "fd " + std::to_string(fd));
    return {};
  }
  return Napi::Number::New(info.Env(), r);
}

// addSeals(fd, seals): fcntl(F_ADD_SEALS).
Napi::Value AddSeals(const Napi::CallbackInfo& info) {
  int64_t fd, seals;
  if (!ArgInt(info, 0, &fd) || !ArgInt(info, 1, &seals)) return {};
  if (fcntl(static_cast<int>(fd), F_ADD_SEALS, static_cast<int>(seals)) < 0) {
    ThrowErrno(info.Env(), "fcntl(F_ADD_SEALS)", errno, "fd " + std::to_string(fd));
    return {};
  }
  return info.Env().Undefined();
}

}  // namespace

void InitAnonfd(Napi::Env env, Napi::Object exports) {
  exports.Set("eventfdCreate", Napi::Function::New(env, EventfdCreate));
  exports.Set("signalfdCreate", Napi::Function::New(env, SignalfdCreate));
  exports.Set("timerfdCreate", Napi::Function::New(env, TimerfdCreate));
  exports.Set("timerfdSettime", Napi::Function::New(env, TimerfdSettime));
  exports.Set("timerfdGettime", Napi::Function::New(env, TimerfdGettime));
  exports.Set("clockGettime", Napi::Function::New(env, ClockGettime));
  exports.Set("timerfdTakeTicks", Napi::Function::New(env, TimerfdTakeTicks));
  exports.Set("timerfdSetTicks", Napi::Function::New(env, TimerfdSetTicks));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate));
  exports.Set("getSeals", Napi::Function::New(env, GetSeals));
  exports.Set("addSeals", Napi::Function::New(env, AddSeals));
}

}  // namespace ferry
