// Tests of the safetensors reader: round trip through a tiny writer (F32, F16, BF16, I32, I64),
// sharded index, and the header checks (truncation, header past EOF, offsets out of range,
// overlaps, wrong sizes, unknown dtype), each naming the file and the tensor.
#include "model/safetensors.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvc {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

struct WTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

std::string ShapeJson(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// Writes a safetensors file; `header_override` replaces the generated JSON header when set.
void WriteSafetensors(const std::string& path, const std::vector<WTensor>& tensors,
                      const std::string& header_override = "",
                      const std::string& metadata_json = "") {
  std::string header = "{";
  if (!metadata_json.empty()) header += "\"__metadata__\":" + metadata_json;
  uint64_t offset = 0;
  std::vector<uint8_t> data;
  for (const WTensor& t : tensors) {
    if (header.size() > 1) header += ",";
    header += "\"" + t.name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":" + ShapeJson(t.shape) +
              ",\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + t.bytes.size()) + "]}";
    offset += t.bytes.size();
    data.insert(data.end(), t.bytes.begin(), t.bytes.end());
  }
  header += "}";
  if (!header_override.empty()) header = header_override;
  while (header.size() % 8 != 0) header += ' ';
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out.write(header.data(), header.size());
  out.write(reinterpret_cast<const char*>(data.data()), data.size());
}

template <typename T>
std::vector<uint8_t> Bytes(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("kvc_safetensors_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

TEST_F(SafetensorsTest, RoundTripAllDtypes) {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> f32(2 * 3 * 4);
  for (float& x : f32) x = dist(rng);
  std::vector<uint16_t> bf16, f16;
  for (float x : f32) {
    bf16.push_back(FloatToBf16(x));
    f16.push_back(FloatToF16(x));
  }
  std::vector<int32_t> i32 = {1, -2, 3, 2147483647};
  std::vector<int64_t> i64 = {5, -6, 7};
  const std::string path = Path("a.safetensors");
  WriteSafetensors(path,
                   {{"w.f32", "F32", {2, 3, 4}, Bytes(f32)},
                    {"w.bf16", "BF16", {6, 4}, Bytes(bf16)},
                    {"w.f16", "F16", {24}, Bytes(f16)},
                    {"ids32", "I32", {4}, Bytes(i32)},
                    {"ids64", "I64", {3}, Bytes(i64)},
                    {"empty", "F32", {0, 5}, {}}},
                   "", R"({"format":"pt","note":"hi"})");
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_THAT((*file)->names(),
              ::testing::ElementsAre("empty", "ids32", "ids64", "w.bf16", "w.f16", "w.f32"));
  EXPECT_EQ((*file)->metadata().at("note"), "hi");

  const TensorView* t = (*file)->Find("w.f32");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::kF32);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(t->numel(), 24);
  EXPECT_EQ(t->ShapeString(), "[2, 3, 4]");
  auto v = ToFloat32(*t);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, f32);

  auto vb = ToFloat32(*(*file)->Find("w.bf16"));
  ASSERT_TRUE(vb.ok());
  auto vh = ToFloat32(*(*file)->Find("w.f16"));
  ASSERT_TRUE(vh.ok());
  for (size_t i = 0; i < f32.size(); ++i) {
    EXPECT_NEAR((*vb)[i], f32[i], std::fabs(f32[i]) * (1.0f / 256)) << i;  // 8-bit mantissa
    EXPECT_NEAR((*vh)[i], f32[i], std::fabs(f32[i]) * (1.0f / 2048) + 1e-7f) << i;  // 11-bit
  }
  auto a = ToInt32(*(*file)->Find("ids32"));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, i32);
  auto b = ToInt32(*(*file)->Find("ids64"));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, (std::vector<int32_t>{5, -6, 7}));
  EXPECT_EQ((*file)->Find("empty")->numel(), 0);
  EXPECT_EQ((*file)->Find("missing"), nullptr);
  // Integer tensors do not convert to float, nor float ones to int.
  EXPECT_FALSE(ToFloat32(*(*file)->Find("ids32")).ok());
  EXPECT_FALSE(ToInt32(*(*file)->Find("w.f32")).ok());
}

TEST_F(SafetensorsTest, HalfConversionsAreExactOnRepresentableValues) {
  for (float x : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f /* min normal */,
                  5.960464477539063e-08f /* min subnormal */, 0.333251953125f}) {
    EXPECT_EQ(F16ToFloat(FloatToF16(x)), x) << x;
  }
  for (float x : {0.0f, 1.0f, -3.0f, 0x1p100f, 0.15625f}) EXPECT_EQ(Bf16ToFloat(FloatToBf16(x)), x);
  EXPECT_TRUE(std::isinf(F16ToFloat(FloatToF16(1e6f))));
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(std::nanf("")))));
  EXPECT_EQ(FloatToF16(1e-9f), 0);                               // underflows to zero
  EXPECT_EQ(FloatToBf16(1.0f + 1.0f / 256), FloatToBf16(1.0f));  // ties to even
}

TEST_F(SafetensorsTest, TruncatedFileIsAnError) {
  const std::string path = Path("t.safetensors");
  std::ofstream(path, std::ios::binary).write("\x10\x00\x00", 3);
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(f.status().message(), HasSubstr(path));
  EXPECT_THAT(f.status().message(), HasSubstr("truncated"));
}

TEST_F(SafetensorsTest, HeaderLengthPastEndOfFile) {
  const std::string path = Path("h.safetensors");
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = 1000;
  out.write(reinterpret_cast<const char*>(&n), 8);
  out.write("{}      ", 8);
  out.close();
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(f.status().message(), HasSubstr("header length 1000"));
  EXPECT_THAT(f.status().message(), HasSubstr(path));
}

TEST_F(SafetensorsTest, DataTruncatedAfterHeader) {
  const std::string path = Path("d.safetensors");
  WriteSafetensors(path, {{"x", "F32", {4}, Bytes(std::vector<float>{1, 2, 3, 4})}});
  fs::resize_file(path, fs::file_size(path) - 4);
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(f.status().message(), HasSubstr("tensor 'x'"));
  EXPECT_THAT(f.status().message(), HasSubstr("out of range"));
}

TEST_F(SafetensorsTest, ShapeThatDoesNotMatchTheBytes) {
  const std::string path = Path("s.safetensors");
  WriteSafetensors(path, {}, R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})");
  // Append the 16 data bytes the header claims.
  std::ofstream(path, std::ios::binary | std::ios::app).write("0123456789abcdef", 16);
  auto f = SafetensorsFile::Open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(f.status().message(), HasSubstr("tensor 'x'"));
  EXPECT_THAT(f.status().message(), HasSubstr("needs 12"));
}

TEST_F(SafetensorsTest, OverlappingTensorsAndUnknownDtypeAndBadJson) {
  struct Case {
    std::string header, expect;
  };
  const Case cases[] = {
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
           "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       "overlaps"},
      {R"({"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", "F8_E4M3"},
      {R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", "bad shape"},
      {R"({"a":{"dtype":"F32","shape":[2]}})", "data_offsets"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", "out of range"},
      {R"({"a": )", "not valid JSON"},
      {R"([1,2])", "not a JSON object"},
  };
  for (const Case& c : cases) {
    const std::string path = Path("o.safetensors");
    WriteSafetensors(path, {}, c.header);
    std::ofstream(path, std::ios::binary | std::ios::app).write("0123456789abcdef", 16);
    auto f = SafetensorsFile::Open(path);
    ASSERT_FALSE(f.ok()) << c.header;
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(f.status().message(), HasSubstr(c.expect)) << f.status();
    EXPECT_THAT(f.status().message(), HasSubstr(path));
  }
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  auto f = SafetensorsFile::Open(Path("none.safetensors"));
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, ShardedCheckpoint) {
  WriteSafetensors(Path("model-00001-of-00002.safetensors"),
                   {{"a", "F32", {2}, Bytes(std::vector<float>{1, 2})},
                    {"b", "BF16", {1}, Bytes(std::vector<uint16_t>{FloatToBf16(3.0f)})}});
  WriteSafetensors(Path("model-00002-of-00002.safetensors"),
                   {{"c", "F16", {1}, Bytes(std::vector<uint16_t>{FloatToF16(4.0f)})}});
  std::ofstream(Path("model.safetensors.index.json"))
      << R"({"metadata": {"total_size": 10}, "weight_map": {
            "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors"}})";
  auto ckpt = SafetensorsCheckpoint::Open(dir_.string());  // the directory finds the index
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->files().size(), 2u);
  EXPECT_THAT((*ckpt)->names(), ::testing::ElementsAre("a", "b", "c"));
  EXPECT_EQ(*ToFloat32(*(*ckpt)->Find("b")), std::vector<float>{3.0f});
  EXPECT_EQ(*ToFloat32(*(*ckpt)->Find("c")), std::vector<float>{4.0f});
  EXPECT_THAT((*ckpt)->Find("c")->file, HasSubstr("model-00002-of-00002"));

  // An index naming a tensor its shard lacks.
  std::ofstream(Path("model.safetensors.index.json"))
      << R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                            "zz": "model-00002-of-00002.safetensors"}})";
  auto bad = SafetensorsCheckpoint::Open(Path("model.safetensors.index.json"));
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("'zz'"));

  // A tensor in two shards.
  WriteSafetensors(Path("model-00002-of-00002.safetensors"),
                   {{"a", "F32", {1}, Bytes(std::vector<float>{9})},
                    {"c", "F32", {1}, Bytes(std::vector<float>{8})}});
  std::ofstream(Path("model.safetensors.index.json"))
      << R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                            "c": "model-00002-of-00002.safetensors"}})";
  auto dup = SafetensorsCheckpoint::Open(Path("model.safetensors.index.json"));
  ASSERT_FALSE(dup.ok());
  EXPECT_THAT(dup.status().message(), HasSubstr("'a' appears in both"));

  // A missing shard file.
  std::ofstream(Path("model.safetensors.index.json"))
      << R"({"weight_map": {"a": "model-00009-of-00009.safetensors"}})";
  auto missing = SafetensorsCheckpoint::Open(Path("model.safetensors.index.json"));
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("model-00009-of-00009"));
}

TEST_F(SafetensorsTest, OpensTheFixtureModel) {
  auto ckpt = SafetensorsCheckpoint::Open("tests/fixtures/models/llama_tied");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const TensorView* e = (*ckpt)->Find("model.embed_tokens.weight");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->shape, (std::vector<int64_t>{320, 64}));
  EXPECT_EQ((*ckpt)->Find("lm_head.weight"), nullptr);  // tied: not saved
}

}  // namespace
}  // namespace kvc
