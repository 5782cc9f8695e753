// DecoderPipeline: the `decoder` of a Hugging Face tokenizer.json (ByteLevel, Metaspace, Replace,
// ByteFallback, Fuse, Strip, Sequence of these, or none: tokens joined with " ") run as a
// streaming transducer. Tokens are pushed one at a time; a stage emits text only once later
// tokens can no longer change it (incomplete UTF-8 and byte-fallback runs are held back), so
// Decode = Push(all) + Flush is exactly HF's `decoder.decode(tokens)`, and a stream of Push
// outputs concatenated with Flush is identical to it by construction.
//
// The pipeline is immutable and shared; each stream owns a DecoderPipeline::State. Internal to
// model/tokenizer.cc.
#ifndef KVC_MODEL_TOKENIZER_DECODER_H_
#define KVC_MODEL_TOKENIZER_DECODER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/tokenizer_json.h"
#include "model/tokenizer_regex.h"

namespace kvc::tokenizer_internal {

class DecoderPipeline {
 public:
  // `j` is the tokenizer.json `decoder` value, or nullptr when it is absent / null.
  static absl::StatusOr<std::unique_ptr<DecoderPipeline>> FromJson(const Json* j,
                                                                   std::string_view path);
  ~DecoderPipeline();

  // Per-stream state (pending bytes, token counters, ...).
  struct State;
  struct StateDeleter {
    void operator()(State* state) const;
  };
  using StatePtr = std::unique_ptr<State, StateDeleter>;
  // One decoder step (a Sequence is flattened into its steps).
  struct Stage;
  StatePtr NewState() const;
  // Feeds one token string; appends the text that became final to `out`.
  void Push(State* state, std::string_view token, std::string* out) const;
  // Ends the stream: appends everything still held back.
  void Flush(State* state, std::string* out) const;

 private:
  DecoderPipeline();
  void Feed(State* st, size_t k, std::string_view text, bool new_token, std::string* out) const;
  void FlushStage(State* st, size_t k, std::string* out) const;

  std::vector<Stage> stages_;
};

}  // namespace kvc::tokenizer_internal

#endif  // KVC_MODEL_TOKENIZER_DECODER_H_
