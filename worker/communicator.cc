#include "worker/communicator.h"

#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status_macros.h"

namespace kvc {

// One rank's handle on a LocalCommunicatorGroup.
class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(LocalCommunicatorGroup* group, int rank) : group_(group), rank_(rank) {}

  int rank() const override { return rank_; }
  int world_size() const override { return group_->world_size(); }

  absl::Status AllReduceSum(std::span<float> data) override {
    LocalCommunicatorGroup::Slot s;
    s.op = LocalCommunicatorGroup::Op::kAllReduceFloat;
    s.send = data.data();
    s.recv = data.data();
    s.count = static_cast<int64_t>(data.size());
    s.recv_count = s.count;
    return group_->Run(rank_, s);
  }
  absl::Status AllReduceSum(std::span<int64_t> data) override {
    LocalCommunicatorGroup::Slot s;
    s.op = LocalCommunicatorGroup::Op::kAllReduceInt64;
    s.send = data.data();
    s.recv = data.data();
    s.count = static_cast<int64_t>(data.size());
    s.recv_count = s.count;
    return group_->Run(rank_, s);
  }
  absl::Status AllGather(std::span<const float> send, std::span<float> recv) override {
    LocalCommunicatorGroup::Slot s;
    s.op = LocalCommunicatorGroup::Op::kAllGather;
    s.send = send.data();
    s.recv = recv.data();
    s.count = static_cast<int64_t>(send.size());
    s.recv_count = static_cast<int64_t>(recv.size());
    return group_->Run(rank_, s);
  }
  absl::Status Broadcast(std::span<std::byte> data, int root) override {
    LocalCommunicatorGroup::Slot s;
    s.op = LocalCommunicatorGroup::Op::kBroadcast;
    s.send = data.data();
    s.recv = data.data();
    s.count = static_cast<int64_t>(data.size());
    s.recv_count = s.count;
    s.root = root;
    return group_->Run(rank_, s);
  }
  absl::Status Barrier() override {
    LocalCommunicatorGroup::Slot s;
    s.op = LocalCommunicatorGroup::Op::kBarrier;
    return group_->Run(rank_, s);
  }
  void Abort() override { group_->Abort(); }

 private:
  LocalCommunicatorGroup* group_;
  int rank_;
};

namespace {

const char* OpName(int op) {
  static constexpr const char* kNames[] = {"AllReduceSum(float)", "AllReduceSum(int64)",
                                           "AllGather", "Broadcast", "Barrier"};
  return kNames[op];
}

}  // namespace

LocalCommunicatorGroup::LocalCommunicatorGroup(int world_size)
    : world_size_(world_size), slots_(world_size) {
  for (int r = 0; r < world_size; ++r) {
    comms_.push_back(std::make_unique<LocalCommunicator>(this, r));
  }
}

LocalCommunicatorGroup::~LocalCommunicatorGroup() = default;

absl::StatusOr<std::unique_ptr<LocalCommunicatorGroup>> LocalCommunicatorGroup::Create(
    int world_size) {
  if (world_size < 1 || world_size > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("world_size must be in [1, 1024], got ", world_size));
  }
  return std::unique_ptr<LocalCommunicatorGroup>(new LocalCommunicatorGroup(world_size));
}

Communicator* LocalCommunicatorGroup::communicator(int rank) {
  KVC_CHECK(rank >= 0 && rank < world_size_) << "rank " << rank;
  return comms_[rank].get();
}

void LocalCommunicatorGroup::Abort() {
  std::lock_guard<std::mutex> lock(mu_);
  aborted_ = true;
  cv_.notify_all();
}

bool LocalCommunicatorGroup::aborted() const {
  std::lock_guard<std::mutex> lock(mu_);
  return aborted_;
}

absl::Status LocalCommunicatorGroup::ArriveAndWait() {
  std::unique_lock<std::mutex> lock(mu_);
  if (aborted_) return absl::AbortedError("communicator group was aborted");
  const uint64_t gen = generation_;
  if (++arrived_ == world_size_) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return absl::OkStatus();
  }
  cv_.wait(lock, [&] { return generation_ != gen || aborted_; });
  if (generation_ != gen) return absl::OkStatus();
  return absl::AbortedError("communicator group was aborted");
}

absl::Status LocalCommunicatorGroup::CheckSlots() const {
  const Slot& first = slots_[0];
  for (int r = 0; r < world_size_; ++r) {
    const Slot& s = slots_[r];
    if (s.op != first.op) {
      return absl::InternalError(absl::StrCat("collective mismatch: rank 0 called ",
                                              OpName(static_cast<int>(first.op)), ", rank ", r,
                                              " called ", OpName(static_cast<int>(s.op))));
    }
    if (s.count != first.count) {
      return absl::InvalidArgumentError(absl::StrCat(OpName(static_cast<int>(s.op)),
                                                     ": rank 0 passed ", first.count,
                                                     " elements, rank ", r, " passed ", s.count));
    }
    const int64_t want_recv = s.op == Op::kAllGather ? s.count * world_size_ : s.count;
    if (s.recv_count != want_recv) {
      return absl::InvalidArgumentError(absl::StrCat(OpName(static_cast<int>(s.op)), ": rank ", r,
                                                     " passed a receive buffer of ", s.recv_count,
                                                     " elements, needs ", want_recv));
    }
    if (s.op == Op::kBroadcast && (s.root != first.root || s.root < 0 || s.root >= world_size_)) {
      return absl::InvalidArgumentError(absl::StrCat("Broadcast: rank ", r, " passed root ", s.root,
                                                     " (rank 0: ", first.root, ", world size ",
                                                     world_size_, ")"));
    }
  }
  return absl::OkStatus();
}

template <typename T>
void LocalCommunicatorGroup::ReduceSlice(int rank, int64_t count) {
  const int64_t begin = count * rank / world_size_;
  const int64_t end = count * (rank + 1) / world_size_;
  T* out = reinterpret_cast<T*>(scratch_.data());
  const T* src0 = static_cast<const T*>(slots_[0].send);
  for (int64_t i = begin; i < end; ++i) out[i] = src0[i];
  for (int r = 1; r < world_size_; ++r) {
    const T* src = static_cast<const T*>(slots_[r].send);
    for (int64_t i = begin; i < end; ++i) out[i] += src[i];
  }
}

absl::Status LocalCommunicatorGroup::Run(int rank, const Slot& slot) {
  if (world_size_ == 1) {
    // Nothing to exchange; only the argument checks and the abort state apply.
    if (aborted()) return absl::AbortedError("communicator group was aborted");
    slots_[0] = slot;
    RETURN_IF_ERROR(CheckSlots());
    if (slot.op == Op::kAllGather && slot.count > 0) {
      std::memcpy(slot.recv, slot.send, sizeof(float) * slot.count);
    }
    return absl::OkStatus();
  }
  slots_[rank] = slot;
  RETURN_IF_ERROR(ArriveAndWait());  // (A) every slot is written
  const absl::Status agree = CheckSlots();
  if (!agree.ok() || slot.op == Op::kBarrier) {
    // Every rank reached the same verdict; wait until all have read the slots before any rank
    // may write its slot for the next collective.
    RETURN_IF_ERROR(ArriveAndWait());
    return agree;
  }
  const int64_t count = slot.count;
  switch (slot.op) {
    case Op::kAllReduceFloat:
    case Op::kAllReduceInt64: {
      const size_t elem = slot.op == Op::kAllReduceFloat ? sizeof(float) : sizeof(int64_t);
      if (rank == 0) {
        // Nobody touches scratch_ between (A) and (B): the previous collective's copy-out
        // finished before every rank arrived at (A).
        bool ok = true;
        try {
          if (scratch_.size() < elem * count) scratch_.resize(elem * count);
        } catch (const std::bad_alloc&) {
          ok = false;
        }
        if (!ok) {
          Abort();
          return absl::ResourceExhaustedError(
              absl::StrCat("AllReduceSum: cannot allocate ", elem * count, " bytes of scratch"));
        }
      }
      RETURN_IF_ERROR(ArriveAndWait());  // (B) scratch is large enough
      if (slot.op == Op::kAllReduceFloat) {
        ReduceSlice<float>(rank, count);
      } else {
        ReduceSlice<int64_t>(rank, count);
      }
      RETURN_IF_ERROR(ArriveAndWait());  // (C) every slice is reduced; nobody reads sends now
      if (count > 0) std::memcpy(slot.recv, scratch_.data(), elem * count);
      return absl::OkStatus();
    }
    case Op::kAllGather: {
      float* recv = static_cast<float*>(slot.recv);
      for (int r = 0; r < world_size_; ++r) {
        if (count > 0) {
          std::memcpy(recv + r * count, slots_[r].send, sizeof(float) * count);
        }
      }
      return ArriveAndWait();  // (C) nobody reads the send buffers any more
    }
    case Op::kBroadcast: {
      if (rank != slot.root && count > 0) {
        std::memcpy(slot.recv, slots_[slot.root].send, count);
      }
      return ArriveAndWait();  // (C) the root's buffer is no longer read
    }
    case Op::kBarrier:
      break;
  }
  return absl::OkStatus();
}

}  // namespace kvc
