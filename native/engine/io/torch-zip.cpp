// PyTorch zip checkpoints (torch.save since 1.6): a STORED zip holding
//   <archive>/data.pkl      the pickled object (usually a state dict)
//   <archive>/data/<key>    raw little-endian storage bytes, one entry per storage
// The zip is read from its central directory (zip64 when present); tensors point straight into
// the stored entries.
#include <unordered_map>

#include "io/model-file-internal.h"

namespace sd {
namespace detail {

namespace {

constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50, kZip64LocatorSig = 0x07064b50;

struct ZipEntry {
    uint16_t method = 0;
    uint16_t flags = 0;
    uint64_t csize = 0, usize = 0, local_offset = 0;
    uint64_t data = 0;  // start of the entry's bytes, from the local header (resolved lazily)
    bool resolved = false;
};

class Zip {
public:
    explicit Zip(const MappedFile & file) : file_(file), path_(file.path()) { read_directory(); }

    ZipEntry * find(const std::string & name) {
        auto it = entries_.find(name);
        return it == entries_.end() ? nullptr : &it->second;
    }
    const std::vector<std::string> & names() const { return names_; }

    // Where a STORED entry's bytes start; checks they fit in the file.
    uint64_t data_start(const std::string & name, ZipEntry & e) {
        if (e.resolved) return e.data;
        ByteReader r(file_.data(), file_.size(), path_);
        r.seek(e.local_offset, "zip local header");
        if (r.read<uint32_t>("zip local header") != kLocalSig)
            throw_format(path_, "zip entry '" + name + "': no local header at offset " + std::to_string(e.local_offset));
        r.skip(22, "zip local header");
        uint16_t name_len = r.read<uint16_t>("zip local header");
        uint16_t extra_len = r.read<uint16_t>("zip local header");
        r.skip(uint64_t(name_len) + extra_len, "zip local header");
        uint64_t end;
        if (!add_u64(r.pos(), e.csize, end) || end > file_.size())
            throw_format(path_, "zip entry '" + name + "' (" + std::to_string(e.csize) + " bytes at offset " +
                                    std::to_string(r.pos()) + ") runs past the end of the file (" +
                                    std::to_string(file_.size()) + " bytes)");
        e.data = r.pos();
        e.resolved = true;
        return e.data;
    }

private:
    const MappedFile & file_;
    const std::string & path_;
    std::unordered_map<std::string, ZipEntry> entries_;
    std::vector<std::string> names_;  // directory order

    void read_directory() {
        const uint64_t size = file_.size();
        if (size < 22) throw_format(path_, "truncated zip: " + std::to_string(size) + " bytes, no end-of-central-directory record");
        // The end record is the last 22 bytes plus a comment of up to 65535 bytes.
        uint64_t eocd = UINT64_MAX;
        uint64_t lowest = size - 22 > 65535 ? size - 22 - 65535 : 0;
        for (uint64_t p = size - 22 + 1; p-- > lowest;) {
            uint32_t sig;
            std::memcpy(&sig, file_.data() + p, 4);
            if (sig == kEndSig) { eocd = p; break; }
        }
        if (eocd == UINT64_MAX) throw_format(path_, "zip end-of-central-directory record not found (truncated or not a zip)");

        ByteReader r(file_.data(), size, path_);
        r.seek(eocd + 10, "zip end record");
        uint64_t count = r.read<uint16_t>("zip end record");
        uint64_t cd_size = r.read<uint32_t>("zip end record");
        uint64_t cd_offset = r.read<uint32_t>("zip end record");

        // zip64: a locator right before the end record points to the zip64 end record.
        if (eocd >= 20) {
            r.seek(eocd - 20, "zip64 locator");
            if (r.read<uint32_t>("zip64 locator") == kZip64LocatorSig) {
                r.skip(4, "zip64 locator");
                uint64_t z64 = r.read<uint64_t>("zip64 locator");
                r.seek(z64, "zip64 end record");
                if (r.read<uint32_t>("zip64 end record") != kZip64EndSig)
                    throw_format(path_, "zip64 end record not found at offset " + std::to_string(z64));
                r.skip(8 + 2 + 2 + 4 + 4 + 8, "zip64 end record");
                count = r.read<uint64_t>("zip64 end record");
                cd_size = r.read<uint64_t>("zip64 end record");
                cd_offset = r.read<uint64_t>("zip64 end record");
            }
        }
        uint64_t cd_end;
        if (!add_u64(cd_offset, cd_size, cd_end) || cd_end > size)
            throw_format(path_, "zip central directory [" + std::to_string(cd_offset) + ", +" + std::to_string(cd_size) +
                                    ") lies outside the file (" + std::to_string(size) + " bytes)");
        if (count > cd_size / 46) throw_format(path_, "zip claims " + std::to_string(count) + " entries in a " +
                                                          std::to_string(cd_size) + "-byte central directory");

        ByteReader cd(file_.data(), cd_end, path_);  // entries must stay inside the directory
        cd.seek(cd_offset, "zip central directory");
        for (uint64_t i = 0; i < count; ++i) {
            if (cd.read<uint32_t>("zip central directory") != kCentralSig)
                throw_format(path_, "zip central directory entry " + std::to_string(i) + " has a bad signature");
            ZipEntry e;
            cd.skip(4, "zip central directory");  // versions
            e.flags = cd.read<uint16_t>("zip central directory");
            e.method = cd.read<uint16_t>("zip central directory");
            cd.skip(8, "zip central directory");  // time, date, crc
            e.csize = cd.read<uint32_t>("zip central directory");
            e.usize = cd.read<uint32_t>("zip central directory");
            uint16_t name_len = cd.read<uint16_t>("zip central directory");
            uint16_t extra_len = cd.read<uint16_t>("zip central directory");
            uint16_t comment_len = cd.read<uint16_t>("zip central directory");
            cd.skip(8, "zip central directory");  // disk, attributes
            e.local_offset = cd.read<uint32_t>("zip central directory");
            std::string name = cd.read_bytes(name_len, "zip entry name");
            // zip64 extra field (id 1): the 64-bit values whose 32-bit fields are all ones, in order.
            cd.need(extra_len, "zip extra field");
            ByteReader x(cd.here(), extra_len, path_);
            while (x.remaining() >= 4) {
                uint16_t id = x.read<uint16_t>("zip extra field");
                uint16_t len = x.read<uint16_t>("zip extra field");
                x.need(len, "zip extra field");
                if (id == 1) {
                    ByteReader z(x.here(), len, path_);
                    if (e.usize == 0xFFFFFFFFu) e.usize = z.read<uint64_t>("zip64 extra field");
                    if (e.csize == 0xFFFFFFFFu) e.csize = z.read<uint64_t>("zip64 extra field");
                    if (e.local_offset == 0xFFFFFFFFu) e.local_offset = z.read<uint64_t>("zip64 extra field");
                }
                x.skip(len, "zip extra field");
            }
            cd.skip(uint64_t(extra_len) + comment_len, "zip extra field");
            if (entries_.emplace(name, e).second) names_.push_back(name);
        }
    }
};

}  // namespace

void read_torch_zip(const FilePtr & file, ModelFile & out) {
    const std::string & path = file->path();
    Zip zip(*file);

    // "<archive>/data.pkl": prefer a top-level folder; the archive name varies with the saver.
    std::string pkl_name;
    for (const auto & n : zip.names()) {
        if (n.size() >= 9 && n.compare(n.size() - 9, 9, "/data.pkl") == 0 && n.find('/') == n.size() - 9) { pkl_name = n; break; }
    }
    if (pkl_name.empty()) {
        for (const auto & n : zip.names()) {
            if (n.size() >= 8 && n.compare(n.size() - 8, 8, "data.pkl") == 0) { pkl_name = n; break; }
        }
    }
    if (pkl_name.empty()) throw_format(path, "zip has no data.pkl entry: not a PyTorch checkpoint");
    const std::string prefix = pkl_name.substr(0, pkl_name.size() - 8);

    if (ZipEntry * order = zip.find(prefix + "byteorder")) {
        if (order->method == 0 && order->csize >= 3) {
            uint64_t at = zip.data_start(prefix + "byteorder", *order);
            if (std::memcmp(file->data() + at, "big", 3) == 0) throw_unsupported(path, "big-endian PyTorch checkpoints are not supported");
        }
    }

    ZipEntry & pkl = *zip.find(pkl_name);
    if (pkl.flags & 1) throw_unsupported(path, "zip entry " + pkl_name + " is encrypted");
    if (pkl.method != 0)
        throw_unsupported(path, "zip entry " + pkl_name + " is compressed (method " + std::to_string(pkl.method) +
                                    "); torch.save stores it uncompressed");
    uint64_t pkl_at = zip.data_start(pkl_name, pkl);
    std::vector<PickledTensor> pickled = unpickle_state_dict(file->data() + pkl_at, pkl.csize, path);

    std::unordered_set<std::string> names;
    for (const auto & t : out.tensors) names.insert(t.name);
    for (auto & p : pickled) {
        const std::string entry_name = prefix + "data/" + p.storage_key;
        const std::string where = "tensor '" + p.name + "'";
        ZipEntry * e = zip.find(entry_name);
        if (!e) throw_format(path, where + " uses storage " + entry_name + ", which is not in the zip");
        if (e->method != 0 || (e->flags & 1))
            throw_unsupported(path, where + ": storage " + entry_name + " is compressed or encrypted; expected stored bytes");
        uint64_t at = zip.data_start(entry_name, *e);
        uint64_t numel = 0, nbytes = 0, skip = 0, end = 0;
        if (!shape_numel(p.shape, numel) || !mul_u64(numel, p.elem_size, nbytes) ||
            !mul_u64(p.storage_offset, p.elem_size, skip) || !add_u64(skip, nbytes, end) || end > e->csize)
            throw_format(path, where + " of size " + shape_text(p.shape) + " at storage offset " +
                                   std::to_string(p.storage_offset) + " needs bytes past the end of storage " + entry_name +
                                   " (" + std::to_string(e->csize) + " bytes)");
        // Row-major contiguous; dims of size 1 (and empty tensors) may carry any stride.
        uint64_t expect = 1;
        for (size_t d = p.shape.size(); numel > 0 && d-- > 0;) {
            if (p.shape[d] != 1 && uint64_t(p.stride[d]) != expect)
                throw_unsupported(path, where + " of size " + shape_text(p.shape) + " has strides " + shape_text(p.stride) +
                                            "; only contiguous tensors are supported");
            expect *= uint64_t(p.shape[d]);  // a partial product of numel: no overflow
        }
        TensorRecord t;
        t.name = std::move(p.name);
        claim_name(names, t.name, path);
        t.dtype = p.dtype;
        t.type = p.type;
        t.shape = std::move(p.shape);
        t.file = file;
        t.offset = at + skip;
        t.nbytes = nbytes;
        out.tensors.push_back(std::move(t));
    }
    out.files.push_back(file);
}

}  // namespace detail
}  // namespace sd
