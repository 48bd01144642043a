// A quick kill: the memory of a killed process is freed by a thread of ferry's afterwards,
// not by the dying process before its PID is free.
//
// A process that exits frees its address space in exit_mm() when it drops the last user
// reference (mm_users) to it, before it becomes a zombie that its parent can reap: 50-100 ms
// per GiB here, all of it between the kill and the PID's release. A migration on one kernel
// restores the tree with its PIDs, so that time was downtime. If another task holds an
// mm_users reference at the kill, exit_mm() only drops its own, the process is a zombie at
// once, and the pages are freed when the holder lets go.
//
// The holder is a thread of ferry's, not anything in the tree: process_vm_readv(2) holds such
// a reference (mm_access() -> get_task_mm()) for the whole call, and its copy into our own
// buffer blocks if that buffer is a page of ours registered with our own userfaultfd (MISSING)
// and not there yet. mmHold starts the thread, and returns once our userfaultfd reports the
// thread's fault (the reference is held from then on); mmRelease resolves it (UFFDIO_ZEROPAGE),
// the call returns and drops the reference, and if the process is gone by then the thread
// frees its memory (exit_mmap) before it ends. Nothing in the tree changes: the remote page
// read is one the caller knows to be present (pinned for reading, as any reader pins it). If
// ferry dies, the thread dies with it and the reference is dropped by the kernel.
//
// The remote page is read before our fault: if it cannot be (unmapped, or its fault waits on
// something), mmHold reports no hold (or gives up waiting after `timeoutMs`; mmRelease still
// resolves the page, so a thread that faults later does not wait on it).
#include <napi.h>

#include <errno.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <map>

#include "errors.h"

namespace ferry {
namespace {

constexpr size_t kPage = 4096;

// One hold. Owned by two: the caller's side (until mmRelease, or a failed mmHold) and the
// thread (until its read returns); the last to let go frees it.
struct Hold {
  pid_t pid = 0;
  uint64_t remote = 0;
  int uffd = -1;
  int done = -1;  // eventfd: the thread's read returned
  void* page = MAP_FAILED;
  std::atomic<int> owners{2};

  void Drop() {
    if (owners.fetch_sub(1) != 1) return;
    if (page != MAP_FAILED) munmap(page, kPage);
    if (uffd >= 0) close(uffd);
    if (done >= 0) close(done);
    delete this;
  }
};

std::map<int64_t, Hold*> holds;
int64_t nextId = 1;

void* Reader(void* arg) {
  Hold* h = static_cast<Hold*>(arg);
  struct iovec local = {h->page, 1};
  struct iovec remote = {reinterpret_cast<void*>(h->remote), 1};
  process_vm_readv(h->pid, &local, 1, &remote, 1, 0);
  // Here the reference is dropped (and a dead process's memory freed, in this thread).
  uint64_t one = 1;
  if (write(h->done, &one, sizeof one) < 0) { /* the caller stops waiting after its timeout */ }
  h->Drop();
  return nullptr;
}

// mmHold(pid, address, timeoutMs) -> a hold id: > 0 the reference is held; < 0 not known to
// be (no fault seen in `timeoutMs`: the read may still be waiting for the remote page), to be
// released all the same; 0 none (the page unreadable, or no thread could start). Throws only for a userfaultfd or memory
// of ours that cannot be made (errno).
Napi::Value MmHold(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t pid, timeoutMs;
  uint64_t address;
  if (!ArgInt(info, 0, &pid) || !ArgU64(info, 1, &address) || !ArgInt(info, 2, &timeoutMs)) return {};
  Hold* h = new Hold();
  h->pid = static_cast<pid_t>(pid);
  h->remote = address;
  auto fail = [&](const char* call, int err) -> Napi::Value {
    h->owners = 1;
    h->Drop();
    ThrowErrno(env, call, err);
    return {};
  };
  h->uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (h->uffd < 0) return fail("userfaultfd", errno);
  struct uffdio_api api = {};
  api.api = UFFD_API;
  if (ioctl(h->uffd, UFFDIO_API, &api) < 0) return fail("ioctl(UFFDIO_API)", errno);
  h->page = mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (h->page == MAP_FAILED) return fail("mmap", errno);
  struct uffdio_register reg = {};
  reg.range.start = reinterpret_cast<uint64_t>(h->page);
  reg.range.len = kPage;
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  if (ioctl(h->uffd, UFFDIO_REGISTER, &reg) < 0) return fail("ioctl(UFFDIO_REGISTER)", errno);
  h->done = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (h->done < 0) return fail("eventfd", errno);

  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  // Every signal blocked in the thread (it inherits the mask it is created with): a signal to
  // ferry is the JS thread's to take, not one to end a hold early.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t th;
  int err = pthread_create(&th, &attr, Reader, h);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  pthread_attr_destroy(&attr);
  if (err != 0) {
    h->owners = 1;  // no thread: ours alone
    h->Drop();
    return Napi::Number::New(env, 0);
  }
  // The thread's fault on our page (held), or its read returning (not held).
  struct pollfd fds[2] = {{h->uffd, POLLIN, 0}, {h->done, POLLIN, 0}};
  int n;
  do n = poll(fds, 2, static_cast<int>(timeoutMs < 0 ? 0 : timeoutMs));
  while (n < 0 && errno == EINTR);
  bool held = n > 0 && (fds[0].revents & POLLIN) != 0;
  if (held) {
    struct uffd_msg msg;
    held = read(h->uffd, &msg, sizeof msg) == sizeof msg && msg.event == UFFD_EVENT_PAGEFAULT;
  }
  if (n > 0 && !held && (fds[1].revents & POLLIN) != 0) {
    h->Drop();  // the read failed and returned: nothing held, nothing to release
    return Napi::Number::New(env, 0);
  }
  int64_t id = nextId++;
  holds[id] = h;
  return Napi::Number::New(env, held ? static_cast<double>(id) : -static_cast<double>(id));
}

// mmRelease(id): the held read completes (its page resolved), dropping the reference; the
// thread frees a dead process's memory on its own afterwards. Unknown ids are ignored.
Napi::Value MmRelease(const Napi::CallbackInfo& info) {
  int64_t id;
  if (!ArgInt(info, 0, &id)) return {};
  auto it = holds.find(id < 0 ? -id : id);
  if (it == holds.end()) return info.Env().Undefined();
  Hold* h = it->second;
  holds.erase(it);
  struct uffdio_zeropage zero = {};
  zero.range.start = reinterpret_cast<uint64_t>(h->page);
  zero.range.len = kPage;
  // Resolves the fault and wakes the thread; a page already there (EEXIST) needs nothing.
  // Should it fail otherwise, the page leaves the userfaultfd (an ordinary fault then gives
  // it a zero page) and the thread is woken to take it: it must never wait on for ever.
  if (ioctl(h->uffd, UFFDIO_ZEROPAGE, &zero) < 0 && errno != EEXIST) {
    struct uffdio_range range = {reinterpret_cast<uint64_t>(h->page), kPage};
    ioctl(h->uffd, UFFDIO_UNREGISTER, &range);
    ioctl(h->uffd, UFFDIO_WAKE, &range);
  }
  h->Drop();
  return info.Env().Undefined();
}

}  // namespace

void InitMmHold(Napi::Env env, Napi::Object exports) {
  exports.Set("mmHold", Napi::Function::New(env, MmHold));
  exports.Set("mmRelease", Napi::Function::New(env, MmRelease));
}

}  // namespace ferry
