// kvc: command-line client of a kvc cluster.
//
//   kvc generate [--server HOST:PORT] [options] "prompt"
//       --max-tokens N  --temperature T  --top-p P  --top-k K  --seed S  --stop STR (repeatable)
//       --ignore-eos  --compression-rate R | --max-cache-tokens N  --policy NAME
//       --protected-window P  --sink-tokens S  --json (print the final result as JSON)
//   kvc status   [--server HOST:PORT]      workers, health, physical/effective KV capacity
//   kvc model    [--server HOST:PORT]      the served model
//   kvc tokenize [--server HOST:PORT] "text"
//
// The server defaults to $KVC_SERVER or 127.0.0.1:50051. Exit code 0 on success, 1 on a server
// error (printed with its gRPC code), 2 on a usage error.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/client.h"

namespace kvc {
namespace {

int Usage(const std::string& error) {
  if (!error.empty()) std::cerr << "kvc: " << error << "\n";
  std::cerr << "usage: kvc generate [--server HOST:PORT] [--max-tokens N] [--temperature T]\n"
               "                    [--top-p P] [--top-k K] [--seed S] [--stop STR]...\n"
               "                    [--ignore-eos] [--compression-rate R | --max-cache-tokens N]\n"
               "                    [--policy kvcompress|snapkv|pyramidkv|streaming|random|none]\n"
               "                    [--protected-window P] [--sink-tokens S] [--json] PROMPT\n"
               "       kvc status [--server HOST:PORT]\n"
               "       kvc model [--server HOST:PORT]\n"
               "       kvc tokenize [--server HOST:PORT] TEXT\n";
  return 2;
}

int Fail(const absl::Status& s) {
  std::cerr << "kvc: " << absl::StatusCodeToString(s.code()) << ": " << s.message() << "\n";
  return 1;
}

std::string FinishName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_EOS:
      return "eos";
    case v1::FINISH_REASON_ABORT:
      return "abort";
    default:
      return "unspecified";
  }
}

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out;
}

struct Args {
  std::string command;
  std::string server;
  std::vector<std::string> positional;
  std::vector<std::pair<std::string, std::string>> options;  // --name value
  std::vector<std::string> switches;                         // --name
};

bool IsSwitch(const std::string& name) { return name == "ignore-eos" || name == "json"; }

std::optional<std::string> Parse(int argc, char** argv, Args* a) {
  if (argc < 2) return "missing command";
  a->command = argv[1];
  const char* env = std::getenv("KVC_SERVER");
  a->server = env ? env : "127.0.0.1:50051";
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") {
      for (++i; i < argc; ++i) a->positional.push_back(argv[i]);
      break;
    }
    if (arg.rfind("--", 0) == 0 && arg.size() > 2) {
      std::string name = arg.substr(2), value;
      size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else if (IsSwitch(name)) {
        a->switches.push_back(name);
        continue;
      } else {
        if (i + 1 >= argc) return "--" + name + " needs a value";
        value = argv[++i];
      }
      if (name == "server") {
        a->server = value;
      } else {
        a->options.emplace_back(name, value);
      }
    } else {
      a->positional.push_back(arg);
    }
  }
  return std::nullopt;
}

template <typename T>
std::optional<std::string> ParseNumber(const std::string& name, const std::string& v, T* out) {
  bool ok;
  if constexpr (std::is_same_v<T, float>) {
    ok = absl::SimpleAtof(v, out);
  } else if constexpr (std::is_same_v<T, uint64_t>) {
    ok = absl::SimpleAtoi(v, out);
  } else {
    ok = absl::SimpleAtoi(v, out);
  }
  if (!ok) return "--" + name + ": not a number: '" + v + "'";
  return std::nullopt;
}

std::optional<std::string> BuildRequest(const Args& a, v1::GenerateRequest* req, bool* json) {
  if (a.positional.size() != 1) return "generate takes exactly one PROMPT argument";
  req->set_prompt(a.positional[0]);
  auto* s = req->mutable_sampling();
  auto* c = req->mutable_compression();
  for (const auto& [name, v] : a.options) {
    std::optional<std::string> err;
    if (name == "max-tokens") {
      int32_t x;
      err = ParseNumber(name, v, &x);
      s->set_max_tokens(x);
    } else if (name == "temperature") {
      float x;
      err = ParseNumber(name, v, &x);
      s->set_temperature(x);
    } else if (name == "top-p") {
      float x;
      err = ParseNumber(name, v, &x);
      s->set_top_p(x);
    } else if (name == "top-k") {
      int32_t x;
      err = ParseNumber(name, v, &x);
      s->set_top_k(x);
    } else if (name == "seed") {
      uint64_t x;
      err = ParseNumber(name, v, &x);
      s->set_seed(x);
    } else if (name == "stop") {
      s->add_stop(v);
    } else if (name == "compression-rate") {
      float x;
      err = ParseNumber(name, v, &x);
      c->set_compression_rate(x);
    } else if (name == "max-cache-tokens") {
      int32_t x;
      err = ParseNumber(name, v, &x);
      c->set_max_cache_tokens(x);
    } else if (name == "protected-window") {
      int32_t x;
      err = ParseNumber(name, v, &x);
      c->set_protected_window(x);
    } else if (name == "sink-tokens") {
      int32_t x;
      err = ParseNumber(name, v, &x);
      c->set_sink_tokens(x);
    } else if (name == "policy") {
      v1::CompressionPolicy p;
      std::string upper = "COMPRESSION_POLICY_";
      for (char ch : v) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      if (!v1::CompressionPolicy_Parse(upper, &p)) return "--policy: unknown policy '" + v + "'";
      c->set_policy(p);
    } else if (name == "model") {
      req->set_model(v);
    } else {
      return "unknown option --" + name;
    }
    if (err) return err;
  }
  for (const auto& sw : a.switches) {
    if (sw == "ignore-eos") s->set_ignore_eos(true);
    if (sw == "json") *json = true;
  }
  return std::nullopt;
}

int Generate(const Args& a) {
  v1::GenerateRequest req;
  bool json = false;
  if (auto err = BuildRequest(a, &req, &json)) return Usage(*err);
  auto client = Client::Connect(a.server);
  if (!client.ok()) return Fail(client.status());
  auto result = (*client)->Generate(req, [json](const v1::GenerateResponse& r) {
    if (!json) {
      std::cout << r.text() << std::flush;
    }
    return true;
  });
  if (!result.ok()) {
    if (!json) std::cout << "\n";
    return Fail(result.status());
  }
  const auto& u = result->usage;
  if (json) {
    std::cout << absl::StrFormat(
        "{\"request_id\": \"%s\", \"text\": \"%s\", \"finish_reason\": \"%s\", "
        "\"prompt_tokens\": %d, \"completion_tokens\": %d, \"kvs_held\": %d, "
        "\"kvs_uncompressed\": %d, \"compression_ratio\": %.4f, \"worker\": \"%s\", "
        "\"total_seconds\": %.4f}\n",
        result->request_id, JsonEscape(result->text), FinishName(result->finish_reason),
        u.prompt_tokens(), u.completion_tokens(), u.kvs_held(), u.kvs_uncompressed(),
        u.compression_ratio(), result->worker, result->timings.total_seconds());
  } else {
    std::cout << "\n";
    std::cerr << absl::StrFormat(
        "[finish: %s | prompt %d tokens, completion %d tokens | KVs held %d of %d uncompressed, "
        "compression ratio %.2fx | first token %.3fs, total %.3fs | worker %s]\n",
        FinishName(result->finish_reason), u.prompt_tokens(), u.completion_tokens(), u.kvs_held(),
        u.kvs_uncompressed(), u.compression_ratio(), result->timings.first_token_seconds(),
        result->timings.total_seconds(), result->worker);
  }
  return 0;
}

int Status(const Args& a) {
  auto client = Client::Connect(a.server);
  if (!client.ok()) return Fail(client.status());
  auto st = (*client)->GetClusterStatus();
  if (!st.ok()) return Fail(st.status());
  std::cout << absl::StrFormat("%-22s %-7s %-10s %-5s %9s %12s %11s %14s %7s\n", "WORKER",
                               "HEALTHY", "MODEL", "BKND", "IN_FLIGHT", "FREE_BLOCKS",
                               "FREE_TOKENS", "EFFECTIVE_TOK", "RATIO");
  for (const auto& w : st->workers()) {
    const auto& c = w.capacity();
    std::cout << absl::StrFormat("%-22s %-7s %-10s %-5s %9d %5d/%-6d %11d %14d %6.2fx\n",
                                 w.address(), w.healthy() ? "yes" : "NO", w.model(), w.backend(),
                                 w.in_flight(), c.free_blocks(), c.total_blocks(),
                                 c.physical_free_tokens(), c.effective_free_tokens(),
                                 c.compression_ratio());
    if (!w.healthy()) std::cout << "    last error: " << w.last_error() << "\n";
  }
  return 0;
}

int Model(const Args& a) {
  auto client = Client::Connect(a.server);
  if (!client.ok()) return Fail(client.status());
  auto m = (*client)->GetModelInfo();
  if (!m.ok()) return Fail(m.status());
  std::cout << m->DebugString();
  return 0;
}

int Tokenize(const Args& a) {
  if (a.positional.size() != 1) return Usage("tokenize takes exactly one TEXT argument");
  auto client = Client::Connect(a.server);
  if (!client.ok()) return Fail(client.status());
  auto t = (*client)->Tokenize(a.positional[0]);
  if (!t.ok()) return Fail(t.status());
  for (int i = 0; i < t->token_ids_size(); ++i) {
    std::cout << t->token_ids(i) << "\t" << t->tokens(i) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace kvc

int main(int argc, char** argv) {
  kvc::Args args;
  if (auto err = kvc::Parse(argc, argv, &args)) return kvc::Usage(*err);
  if (args.command == "generate") return kvc::Generate(args);
  if (args.command == "status") return kvc::Status(args);
  if (args.command == "model") return kvc::Model(args);
  if (args.command == "tokenize") return kvc::Tokenize(args);
  if (args.command == "--help" || args.command == "help") return kvc::Usage("");
  return kvc::Usage("unknown command '" + args.command + "'");
}
