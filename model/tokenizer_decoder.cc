#include "model/tokenizer_decoder.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/unicode_utils.h"

namespace kvc::tokenizer_internal {

namespace {

constexpr std::string_view kReplacementUtf8 = "\xEF\xBF\xBD";

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "<0xAB>" -> 0xAB (HF ByteFallback: 6 bytes, "<0x" + u8::from_str_radix(2 chars, 16) + ">").
bool ParseByteToken(std::string_view t, uint8_t* byte) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return false;
  const int lo = HexValue(t[4]);
  if (lo < 0) return false;
  if (t[3] == '+') {  // from_str_radix accepts a leading '+'
    *byte = static_cast<uint8_t>(lo);
    return true;
  }
  const int hi = HexValue(t[3]);
  if (hi < 0) return false;
  *byte = static_cast<uint8_t>(hi * 16 + lo);
  return true;
}

// HF ByteLevel decoder, per token: every character back to its byte, or the token's own UTF-8
// bytes when some character is not in the ByteLevel alphabet.
void AppendByteLevelBytes(std::string_view token, std::string* bytes) {
  const size_t start = bytes->size();
  size_t pos = 0;
  while (pos < token.size()) {
    const int b = unicode::CharToByte(unicode::DecodeUtf8At(token, &pos));
    if (b < 0) {
      bytes->resize(start);
      bytes->append(token);
      return;
    }
    bytes->push_back(static_cast<char>(b));
  }
}

}  // namespace

struct DecoderPipeline::Stage {
  enum class Kind { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip, kJoinSpace };
  Kind kind;
  // kMetaspace / kStrip: the character; kMetaspace: strip_first (prepend_scheme != never).
  char32_t ch = 0;
  bool strip_first = false;
  // kReplace.
  std::shared_ptr<Regex> pattern;
  std::string content;
  // kStrip.
  size_t start = 0;
  size_t stop = 0;
};

namespace {

struct StageState {
  std::string pending;        // ByteLevel: undecoded bytes; ByteFallback: byte run;
                              // Strip: trailing characters held back
  bool started = false;       // ByteLevel, Fuse, JoinSpace: a token was emitted
  int64_t token_index = -1;   // Metaspace
  size_t lead_remaining = 0;  // Strip
};

}  // namespace

struct DecoderPipeline::State {
  std::vector<StageState> stages;
};

DecoderPipeline::DecoderPipeline() = default;
DecoderPipeline::~DecoderPipeline() = default;

namespace {

absl::Status AppendStages(const Json& j, std::string_view path,
                          std::vector<DecoderPipeline::Stage>* stages);

}  // namespace

absl::StatusOr<std::unique_ptr<DecoderPipeline>> DecoderPipeline::FromJson(const Json* j,
                                                                           std::string_view path) {
  auto pipeline = std::unique_ptr<DecoderPipeline>(new DecoderPipeline());
  if (j == nullptr || j->is_null()) {
    pipeline->stages_.push_back(Stage{Stage::Kind::kJoinSpace});
    return pipeline;
  }
  RETURN_IF_ERROR(AppendStages(*j, path, &pipeline->stages_));
  return pipeline;
}

namespace {

absl::Status AppendStages(const Json& j, std::string_view path,
                          std::vector<DecoderPipeline::Stage>* stages) {
  using Stage = DecoderPipeline::Stage;
  ASSIGN_OR_RETURN(std::string type, GetString(j, "type", path, std::nullopt));
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const Json* list, RequireField(j, "decoders", path));
    const std::string lpath = JoinPath(path, "decoders");
    if (!list->is_array()) return FieldError(lpath, "expected an array");
    for (size_t i = 0; i < list->size(); ++i) {
      RETURN_IF_ERROR(AppendStages((*list)[i], IndexPath(lpath, i), stages));
    }
    return absl::OkStatus();
  }
  Stage stage{Stage::Kind::kFuse};
  if (type == "ByteLevel") {
    stage.kind = Stage::Kind::kByteLevel;
  } else if (type == "ByteFallback") {
    stage.kind = Stage::Kind::kByteFallback;
  } else if (type == "Fuse") {
    stage.kind = Stage::Kind::kFuse;
  } else if (type == "Metaspace") {
    stage.kind = Stage::Kind::kMetaspace;
    ASSIGN_OR_RETURN(stage.ch, GetChar(j, "replacement", path, U'\u2581'));
    ASSIGN_OR_RETURN(std::string scheme, GetString(j, "prepend_scheme", path, "always"));
    if (scheme != "always" && scheme != "first" && scheme != "never") {
      return FieldError(JoinPath(path, "prepend_scheme"),
                        Cat("unknown prepend scheme \"", scheme, "\""));
    }
    stage.strip_first = scheme != "never";
    if (const Json* aps = FindField(j, "add_prefix_space");
        aps != nullptr && aps->is_boolean() && !aps->get<bool>()) {
      stage.strip_first = false;
    }
  } else if (type == "Replace") {
    stage.kind = Stage::Kind::kReplace;
    ASSIGN_OR_RETURN(const Json* pattern, RequireField(j, "pattern", path));
    const std::string ppath = JoinPath(path, "pattern");
    if (const Json* s = FindField(*pattern, "String"); s != nullptr && s->is_string()) {
      stage.pattern = Regex::Literal(s->get<std::string>());
    } else if (const Json* r = FindField(*pattern, "Regex"); r != nullptr && r->is_string()) {
      auto regex = Regex::Compile(r->get<std::string>());
      if (!regex.ok()) return FieldError(JoinPath(ppath, "Regex"), ToStd(regex.status().message()));
      stage.pattern = std::move(regex).value();
    } else {
      return FieldError(ppath, "expected {\"String\": ...} or {\"Regex\": ...}");
    }
    ASSIGN_OR_RETURN(stage.content, GetString(j, "content", path, std::nullopt));
  } else if (type == "Strip") {
    stage.kind = Stage::Kind::kStrip;
    ASSIGN_OR_RETURN(stage.ch, GetChar(j, "content", path, U' '));
    ASSIGN_OR_RETURN(int64_t start, GetInt(j, "start", path, 0));
    ASSIGN_OR_RETURN(int64_t stop, GetInt(j, "stop", path, 0));
    if (start < 0 || stop < 0) return FieldError(path, "start and stop must be >= 0");
    stage.start = static_cast<size_t>(start);
    stage.stop = static_cast<size_t>(stop);
  } else {
    return FieldError(JoinPath(path, "type"), Cat("unsupported decoder \"", type, "\""));
  }
  stages->push_back(std::move(stage));
  return absl::OkStatus();
}

}  // namespace

void DecoderPipeline::StateDeleter::operator()(State* state) const { delete state; }

DecoderPipeline::StatePtr DecoderPipeline::NewState() const {
  StatePtr state(new State());
  state->stages.resize(stages_.size());
  return state;
}

void DecoderPipeline::Push(State* state, std::string_view token, std::string* out) const {
  Feed(state, 0, token, /*new_token=*/true, out);
}

void DecoderPipeline::Flush(State* state, std::string* out) const { FlushStage(state, 0, out); }

// Each stage receives items: (text, new_token). An item with new_token=false continues the token
// of the previous item (stages that fuse tokens emit one token in several chunks). Stages that
// work per token forward the start of a token eagerly as an empty item.
void DecoderPipeline::Feed(State* st, size_t k, std::string_view text, bool new_token,
                           std::string* out) const {
  if (k == stages_.size()) {
    out->append(text);
    return;
  }
  const Stage& stage = stages_[k];
  StageState& ss = st->stages[k];
  switch (stage.kind) {
    case Stage::Kind::kByteLevel: {
      AppendByteLevelBytes(text, &ss.pending);
      std::string decoded;
      const size_t used = unicode::DecodeLossy(ss.pending, /*final=*/false, &decoded);
      ss.pending.erase(0, used);
      if (!ss.started) {
        ss.started = true;
        Feed(st, k + 1, decoded, true, out);
      } else if (!decoded.empty()) {
        Feed(st, k + 1, decoded, false, out);
      }
      return;
    }
    case Stage::Kind::kByteFallback: {
      uint8_t byte;
      if (new_token && ParseByteToken(text, &byte)) {
        ss.pending.push_back(static_cast<char>(byte));
        return;
      }
      if (!ss.pending.empty()) {
        std::string run;
        run.swap(ss.pending);
        if (unicode::IsValidUtf8(run)) {
          Feed(st, k + 1, run, true, out);
        } else {
          for (size_t i = 0; i < run.size(); ++i) Feed(st, k + 1, kReplacementUtf8, true, out);
        }
      }
      Feed(st, k + 1, text, new_token, out);
      return;
    }
    case Stage::Kind::kFuse:
      Feed(st, k + 1, text, !ss.started, out);
      ss.started = true;
      return;
    case Stage::Kind::kReplace: {
      std::vector<std::pair<size_t, size_t>> matches;
      stage.pattern->FindAll(text, &matches);
      if (matches.empty()) {
        Feed(st, k + 1, text, new_token, out);
        return;
      }
      std::string replaced;
      size_t prev = 0;
      for (const auto& m : matches) {
        replaced.append(text.substr(prev, m.first - prev));
        replaced.append(stage.content);
        prev = m.second;
      }
      replaced.append(text.substr(prev));
      Feed(st, k + 1, replaced, new_token, out);
      return;
    }
    case Stage::Kind::kMetaspace: {
      if (new_token) ++ss.token_index;
      const bool drop = ss.token_index == 0 && stage.strip_first;
      std::string result;
      result.reserve(text.size());
      size_t pos = 0;
      while (pos < text.size()) {
        const size_t begin = pos;
        const char32_t cp = unicode::DecodeUtf8At(text, &pos);
        if (cp == stage.ch) {
          if (!drop) result.push_back(' ');
        } else {
          result.append(text.substr(begin, pos - begin));
        }
      }
      Feed(st, k + 1, result, new_token, out);
      return;
    }
    case Stage::Kind::kStrip: {
      if (new_token) {
        ss.pending.clear();  // the previous token's trailing characters: stripped
        ss.lead_remaining = stage.start;
        Feed(st, k + 1, "", true, out);
      }
      std::string body;
      body.reserve(text.size());
      size_t pos = 0;
      while (pos < text.size()) {
        const size_t begin = pos;
        const char32_t cp = unicode::DecodeUtf8At(text, &pos);
        if (ss.lead_remaining > 0) {
          if (cp == stage.ch) {
            --ss.lead_remaining;
            continue;
          }
          ss.lead_remaining = 0;
        }
        body.append(text.substr(begin, pos - begin));
      }
      if (stage.stop == 0) {
        if (!body.empty()) Feed(st, k + 1, body, false, out);
        return;
      }
      // Hold back up to `stop` trailing strip characters until the token's end is known.
      std::string combined = ss.pending + body;
      size_t cut = combined.size();
      for (size_t count = 0; count < stage.stop && cut > 0; ++count) {
        size_t b = cut - 1;
        while (b > 0 && (static_cast<unsigned char>(combined[b]) & 0xC0) == 0x80) --b;
        size_t p = b;
        if (unicode::DecodeUtf8At(combined, &p) != stage.ch) break;
        cut = b;
      }
      if (cut > 0) Feed(st, k + 1, std::string_view(combined).substr(0, cut), false, out);
      ss.pending = combined.substr(cut);
      return;
    }
    case Stage::Kind::kJoinSpace:
      if (new_token) {
        if (ss.started) Feed(st, k + 1, " ", false, out);
        ss.started = true;
      }
      Feed(st, k + 1, text, new_token, out);
      return;
  }
}

void DecoderPipeline::FlushStage(State* st, size_t k, std::string* out) const {
  if (k == stages_.size()) return;
  const Stage& stage = stages_[k];
  StageState& ss = st->stages[k];
  switch (stage.kind) {
    case Stage::Kind::kByteLevel: {
      std::string decoded;
      unicode::DecodeLossy(ss.pending, /*final=*/true, &decoded);
      ss.pending.clear();
      if (!ss.started) {
        ss.started = true;
        Feed(st, k + 1, decoded, true, out);
      } else if (!decoded.empty()) {
        Feed(st, k + 1, decoded, false, out);
      }
      break;
    }
    case Stage::Kind::kByteFallback:
      if (!ss.pending.empty()) {
        std::string run;
        run.swap(ss.pending);
        if (unicode::IsValidUtf8(run)) {
          Feed(st, k + 1, run, true, out);
        } else {
          for (size_t i = 0; i < run.size(); ++i) Feed(st, k + 1, kReplacementUtf8, true, out);
        }
      }
      break;
    case Stage::Kind::kFuse:
      if (!ss.started) {
        ss.started = true;
        Feed(st, k + 1, "", true, out);
      }
      break;
    case Stage::Kind::kStrip:
      ss.pending.clear();
      break;
    case Stage::Kind::kReplace:
    case Stage::Kind::kMetaspace:
    case Stage::Kind::kJoinSpace:
      break;
  }
  FlushStage(st, k + 1, out);
}

}  // namespace kvc::tokenizer_internal
