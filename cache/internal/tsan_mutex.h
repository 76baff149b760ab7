// Lock guards for absl::Mutex that ThreadSanitizer can see (internal to cache/). Debian's
// abseil is a prebuilt, uninstrumented library, so TSan cannot observe absl::Mutex's
// happens-before edges and would flag every guarded access. These guards behave exactly like
// absl::MutexLock / absl::ReaderMutexLock (same thread-safety annotations) and, in TSan builds
// only, tell TSan "acquire" after locking and "release" before unlocking. Waits that drop the
// lock (CondVar::Wait, Mutex::Await*) are bracketed with TsanRelease/TsanAcquire by the caller.
#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

#if defined(__SANITIZE_THREAD__)
#define KVBLOCK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KVBLOCK_TSAN 1
#endif
#endif

#ifdef KVBLOCK_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace kvblock::internal {

inline void TsanAcquire(const absl::Mutex* mu) {
#ifdef KVBLOCK_TSAN
  __tsan_acquire(const_cast<absl::Mutex*>(mu));
#else
  (void)mu;
#endif
}

inline void TsanRelease(const absl::Mutex* mu) {
#ifdef KVBLOCK_TSAN
  __tsan_release(const_cast<absl::Mutex*>(mu));
#else
  (void)mu;
#endif
}

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(absl::Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_->Lock();
    TsanAcquire(mu_);
  }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() {
    TsanRelease(mu_);
    mu_->Unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  absl::Mutex* const mu_;
};

class ABSL_SCOPED_LOCKABLE ReaderMutexLock {
 public:
  explicit ReaderMutexLock(absl::Mutex* mu) ABSL_SHARED_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_->ReaderLock();
    TsanAcquire(mu_);
  }
  ~ReaderMutexLock() ABSL_UNLOCK_FUNCTION() {
    TsanRelease(mu_);
    mu_->ReaderUnlock();
  }
  ReaderMutexLock(const ReaderMutexLock&) = delete;
  ReaderMutexLock& operator=(const ReaderMutexLock&) = delete;

 private:
  absl::Mutex* const mu_;
};

}  // namespace kvblock::internal
