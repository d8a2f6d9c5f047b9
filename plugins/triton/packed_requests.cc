#include "packed_requests.h"

#include <cstring>
#include <limits>
#include <stdexcept>

namespace dd_triton {

size_t elem_size(Elem t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return 1;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return 2;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return 8;
    default: return 0;
  }
}

namespace {
constexpr std::pair<const char*, Elem> kNumpyNames[] = {
      {"bool", ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL},       {"int8", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8},
      {"uint8", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8},     {"int16", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16},
      {"uint16", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16},   {"int32", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32},
      {"uint32", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32},   {"int64", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64},
      {"uint64", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64},   {"float16", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16},
      {"float32", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT},   {"float64", ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE},
      {"bfloat16", ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16}};
}  // namespace

Elem elem_from_numpy(const std::string& name) {
  for (const auto& [n, t] : kNumpyNames)
    if (name == n) return t;
  throw std::runtime_error("dtype '" + name + "' is not supported");
}

std::string elem_name(Elem t) {
  for (const auto& [n, e] : kNumpyNames)
    if (e == t) return n;
  return "ONNX type " + std::to_string(static_cast<int>(t));
}

Spec Spec::from_json(const Json& j) {
  if (j.str_or("form", "tables") != "packed")
    throw std::runtime_error("the dlrm_deploy backend serves the packed request form; this model's "
                             "dlrm_deploy_io.json has form '" + j.str_or("form", "tables") +
                             "' (write the repository again with --request-form packed)");
  Spec s;
  s.onnx = j["onnx"].str();
  s.library = j["library"].str();
  for (const Json& d : j["dense"].array()) s.dense.push_back(d["name"].str());
  for (const Json& o : j["outputs"].array()) s.outputs.push_back(o.str());
  const Json& p = j["packed"];
  s.ids = p["ids"].str();
  s.lengths = p["lengths"].str();
  s.weights = p.str_or("weights", "");
  s.tables = static_cast<int>(p["tables"].integer());
  for (const Json& w : p["weighted"].array()) s.weighted.push_back(w.boolean() ? 1 : 0);
  s.ids_type = elem_from_numpy(p["ids_dtype"].str());
  if (!s.weights.empty()) s.weights_type = elem_from_numpy(p["weights_dtype"].str());
  const auto& bags = j["bags"].array();
  const auto& ranges = p["bag_tables"].array();
  if (bags.size() != ranges.size() || static_cast<int>(s.weighted.size()) != s.tables)
    throw std::runtime_error("dlrm_deploy_io.json: 'bags', 'packed.bag_tables' and 'packed.weighted' disagree");
  for (size_t k = 0; k < bags.size(); ++k) {
    BagSpec b;
    b.indices = bags[k]["indices"].str();
    b.offsets = bags[k].str_or("offsets", "");
    b.lengths = bags[k]["lengths"].str();
    b.weights = bags[k].str_or("weights", "");
    b.t0 = static_cast<int>(ranges[k].array().at(0).integer());
    b.t1 = static_cast<int>(ranges[k].array().at(1).integer());
    b.include_last_offset = bags[k]["include_last_offset"].integer() != 0;
    b.indices_type = elem_from_numpy(bags[k]["indices_dtype"].str());
    b.offsets_type = elem_from_numpy(bags[k]["offsets_dtype"].str());
    if (b.t0 < 0 || b.t1 <= b.t0 || b.t1 > s.tables)
      throw std::runtime_error("dlrm_deploy_io.json: bag '" + b.indices + "' has a bad table range");
    s.bags.push_back(b);
  }
  return s;
}

namespace {

// The input `name` of one request with Triton's leading 1 checked; "" or the reason.
std::string fetch(const InputGetter& get, const std::string& name, View* v) {
  std::string err = get(name, v);
  if (!err.empty()) return err;
  if (v->shape.empty() || v->shape[0] != 1) {
    std::string dims;
    for (int64_t d : v->shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
    return "input '" + name + "' has shape [" + dims + "]: its leading dim must be 1 (one request; the samples follow)";
  }
  return "";
}

int64_t elements(const View& v) { return static_cast<int64_t>(v.bytes / elem_size(v.type)); }

std::string type_error(const std::string& name, Elem want) { return "input '" + name + "' must be " + elem_name(want); }

}  // namespace

std::string parse_request(const InputGetter& get, const Spec& spec, Request* r) {
  r->dense.assign(spec.dense.size(), View{});
  for (size_t i = 0; i < spec.dense.size(); ++i) {
    std::string err = fetch(get, spec.dense[i], &r->dense[i]);
    if (!err.empty()) return err;
    int64_t b = r->dense[i].shape.size() >= 2 ? r->dense[i].shape[1] : -1;
    if (i > 0 && b != r->b)
      return "per-sample inputs '" + spec.dense[0] + "' and '" + spec.dense[i] + "' disagree on the number of samples";
    r->b = b;
  }
  if (r->b < 0) return "input '" + spec.dense[0] + "' has no samples dim";
  View lengths;
  std::string err = fetch(get, spec.lengths, &lengths);
  if (err.empty()) err = fetch(get, spec.ids, &r->ids);
  if (!err.empty()) return err;
  if (lengths.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) return type_error(spec.lengths, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
  if (r->ids.type != spec.ids_type) return type_error(spec.ids, spec.ids_type);
  const int64_t t = spec.tables, n_len = elements(lengths);
  if (n_len != t * r->b)
    return "input '" + spec.lengths + "' has " + std::to_string(n_len) + " entries; " + std::to_string(r->b) +
           " samples x " + std::to_string(t) + " table(s) need " + std::to_string(t * r->b);
  r->lengths = static_cast<const int32_t*>(lengths.data);
  r->bounds.assign(t + 1, 0);
  r->wbounds.assign(t + 1, 0);
  for (int64_t k = 0; k < t; ++k) {
    int64_t count = 0;
    for (int64_t s = 0; s < r->b; ++s) {
      int32_t len = r->lengths[k * r->b + s];
      if (len < 0) return "input '" + spec.lengths + "' has a negative length";
      count += len;
    }
    r->bounds[k + 1] = r->bounds[k] + count;
    r->wbounds[k + 1] = r->wbounds[k] + (spec.weighted[k] ? count : 0);
  }
  if (r->bounds[t] != elements(r->ids))
    return "input '" + spec.lengths + "' adds up to " + std::to_string(r->bounds[t]) + " ids, but '" + spec.ids +
           "' has " + std::to_string(elements(r->ids));
  if (spec.weights.empty()) return "";
  err = fetch(get, spec.weights, &r->weights);
  if (!err.empty()) return err;
  if (r->weights.type != spec.weights_type) return type_error(spec.weights, spec.weights_type);
  if (elements(r->weights) != r->wbounds[t])
    return "input '" + spec.weights + "' has " + std::to_string(elements(r->weights)) +
           " entries; the weighted tables' lengths add up to " + std::to_string(r->wbounds[t]);
  return "";
}

namespace {

int64_t id_at(const View& ids, int64_t i) {
  return ids.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 ? static_cast<const int32_t*>(ids.data)[i]
                                                         : static_cast<const int64_t*>(ids.data)[i];
}

// Bag `bag`'s ids, table-major over the requests, in its index type (never wrapped).
Feed merge_ids(const std::vector<const Request*>& reqs, const BagSpec& bag, const Take& take) {
  int64_t n = 0;
  for (const Request* r : reqs) n += r->bounds[bag.t1] - r->bounds[bag.t0];
  const size_t width = elem_size(bag.indices_type);
  Feed f{bag.indices, bag.indices_type, {n}, take(bag.indices, static_cast<size_t>(n) * width), static_cast<size_t>(n) * width};
  char* out = static_cast<char*>(f.data);
  for (int t = bag.t0; t < bag.t1; ++t) {
    for (const Request* r : reqs) {
      const int64_t begin = r->bounds[t], count = r->bounds[t + 1] - begin;
      if (r->ids.type == bag.indices_type) {  // same width: one copy
        std::memcpy(out, static_cast<const char*>(r->ids.data) + begin * width, count * width);
      } else if (bag.indices_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
        for (int64_t i = 0; i < count; ++i) reinterpret_cast<int64_t*>(out)[i] = id_at(r->ids, begin + i);
      } else {
        for (int64_t i = 0; i < count; ++i) {
          int64_t id = id_at(r->ids, begin + i);
          if (id < std::numeric_limits<int32_t>::min() || id > std::numeric_limits<int32_t>::max())
            throw std::runtime_error("id " + std::to_string(id) + " does not fit the model's int32 input '" +
                                     bag.indices + "'");
          reinterpret_cast<int32_t*>(out)[i] = static_cast<int32_t>(id);
        }
      }
      out += count * width;
    }
  }
  return f;
}

// Bag `bag`'s per-sample weights, table-major over the requests.
Feed merge_weights(const std::vector<const Request*>& reqs, const BagSpec& bag, const Spec& spec, const Take& take) {
  const size_t width = elem_size(spec.weights_type);
  int64_t n = 0;
  for (const Request* r : reqs) n += r->wbounds[bag.t1] - r->wbounds[bag.t0];
  Feed f{bag.weights, spec.weights_type, {n}, take(bag.weights, static_cast<size_t>(n) * width), static_cast<size_t>(n) * width};
  char* out = static_cast<char*>(f.data);
  for (int t = bag.t0; t < bag.t1; ++t) {
    for (const Request* r : reqs) {
      const int64_t count = r->wbounds[t + 1] - r->wbounds[t];
      std::memcpy(out, static_cast<const char*>(r->weights.data) + r->wbounds[t] * width, count * width);
      out += count * width;
    }
  }
  return f;
}

template <typename T>
void write_lengths_or_offsets(const std::vector<const Request*>& reqs, const BagSpec& bag, bool offsets, T* out) {
  int64_t run = 0;
  if (offsets) *out++ = 0;
  for (int t = bag.t0; t < bag.t1; ++t) {
    for (const Request* r : reqs) {
      const int32_t* len = r->lengths + static_cast<int64_t>(t) * r->b;
      for (int64_t s = 0; s < r->b; ++s) {
        run += len[s];
        *out++ = static_cast<T>(offsets ? run : len[s]);
      }
    }
  }
}

// Bag `bag`'s offsets (exclusive running sum over its tables' merged lengths, B+1 with the total unless
// include_last_offset is off) or, for a model that takes lengths, the merged lengths themselves.
Feed merge_offsets(const std::vector<const Request*>& reqs, int64_t samples, const BagSpec& bag, const Take& take) {
  const bool offsets = !bag.offsets.empty();
  const int64_t values = (bag.t1 - bag.t0) * samples;
  int64_t total = 0;
  for (const Request* r : reqs) total += r->bounds[bag.t1] - r->bounds[bag.t0];
  if (offsets && bag.offsets_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 && total > std::numeric_limits<int32_t>::max())
    throw std::runtime_error(std::to_string(total) + " ids in one run do not fit the model's int32 offsets");
  const int64_t stored = offsets ? values + 1 : values;
  const size_t width = elem_size(bag.offsets_type);
  const std::string& name = offsets ? bag.offsets : bag.lengths;
  void* data = take(name, static_cast<size_t>(stored) * width);
  if (bag.offsets_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)
    write_lengths_or_offsets(reqs, bag, offsets, static_cast<int32_t*>(data));
  else
    write_lengths_or_offsets(reqs, bag, offsets, static_cast<int64_t*>(data));
  const int64_t kept = offsets && !bag.include_last_offset ? values : stored;
  return Feed{name, bag.offsets_type, {kept}, data, static_cast<size_t>(kept) * width};
}

}  // namespace

std::vector<Feed> merge(const std::vector<const Request*>& reqs, const Spec& spec, const Take& take) {
  std::vector<Feed> feeds;
  int64_t samples = 0;
  for (const Request* r : reqs) samples += r->b;
  for (size_t i = 0; i < spec.dense.size(); ++i) {
    const View& first = reqs.front()->dense[i];
    std::vector<int64_t> shape(first.shape.begin() + 1, first.shape.end());
    shape[0] = samples;
    size_t bytes = 0;
    for (const Request* r : reqs) {
      const View& v = r->dense[i];
      if (v.type != first.type || !std::equal(v.shape.begin() + 2, v.shape.end(), first.shape.begin() + 2, first.shape.end()))
        throw std::runtime_error("requests disagree on the type or per-sample dims of input '" + spec.dense[i] + "'");
      bytes += v.bytes;
    }
    char* out = static_cast<char*>(take(spec.dense[i], bytes));
    feeds.push_back(Feed{spec.dense[i], first.type, shape, out, bytes});
    for (const Request* r : reqs) {
      std::memcpy(out, r->dense[i].data, r->dense[i].bytes);
      out += r->dense[i].bytes;
    }
  }
  for (const BagSpec& bag : spec.bags) {
    feeds.push_back(merge_ids(reqs, bag, take));
    if (!bag.weights.empty()) feeds.push_back(merge_weights(reqs, bag, spec, take));
    feeds.push_back(merge_offsets(reqs, samples, bag, take));
  }
  return feeds;
}

}  // namespace dd_triton
