// MappedFile: read-only memory map of a whole file.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "core/errors.h"
#include "io/model-file.h"

#if defined(_WIN32)
#  define WIN32_LEAN_AND_MEAN
#  define NOMINMAX
#  include <windows.h>
#else
#  include <fcntl.h>
#  include <sys/mman.h>
#  include <sys/stat.h>
#  include <unistd.h>
#endif

namespace sd {

namespace {
// Zero-length files map to this so data() is never null (memcmp/memcpy on null is undefined).
const uint8_t kEmpty[1] = {0};
}  // namespace

#if defined(_WIN32)

static std::string win_error_text(DWORD err) {
    char buf[512];
    DWORD n = FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, nullptr, err, 0, buf, sizeof buf, nullptr);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) --n;
    return n ? std::string(buf, n) : "error " + std::to_string(err);
}

MappedFile::MappedFile(const std::string & path) : path_(path) {
    // Paths are UTF-8 in the engine; Windows wants UTF-16.
    int wlen = MultiByteToWideChar(CP_UTF8, 0, path.c_str(), -1, nullptr, 0);
    if (wlen <= 0) throw Error(ErrorCode::Io, path + ": cannot open: path is not valid UTF-8", path);
    std::wstring wpath(size_t(wlen), L'\0');
    MultiByteToWideChar(CP_UTF8, 0, path.c_str(), -1, &wpath[0], wlen);

    HANDLE file = CreateFileW(wpath.c_str(), GENERIC_READ, FILE_SHARE_READ, nullptr, OPEN_EXISTING,
                              FILE_ATTRIBUTE_NORMAL, nullptr);
    if (file == INVALID_HANDLE_VALUE)
        throw Error(ErrorCode::Io, path + ": cannot open: " + win_error_text(GetLastError()), path);
    if (GetFileType(file) != FILE_TYPE_DISK) {
        CloseHandle(file);
        throw Error(ErrorCode::Io, path + ": is not a regular file", path);
    }
    LARGE_INTEGER size;
    if (!GetFileSizeEx(file, &size)) {
        DWORD err = GetLastError();
        CloseHandle(file);
        throw Error(ErrorCode::Io, path + ": cannot read size: " + win_error_text(err), path);
    }
    file_handle_ = file;
    size_ = uint64_t(size.QuadPart);
    if (size_ == 0) {
        data_ = kEmpty;
        return;
    }
    HANDLE mapping = CreateFileMappingW(file, nullptr, PAGE_READONLY, 0, 0, nullptr);
    if (!mapping) {
        DWORD err = GetLastError();
        CloseHandle(file);
        throw Error(ErrorCode::Io, path + ": cannot map: " + win_error_text(err), path);
    }
    void * view = MapViewOfFile(mapping, FILE_MAP_READ, 0, 0, 0);
    if (!view) {
        DWORD err = GetLastError();
        CloseHandle(mapping);
        CloseHandle(file);
        throw Error(ErrorCode::Io, path + ": cannot map: " + win_error_text(err), path);
    }
    mapping_handle_ = mapping;
    data_ = static_cast<const uint8_t *>(view);
}

// Opened without FILE_SHARE_WRITE or FILE_SHARE_DELETE: nobody can write, truncate or replace
// the file while it is mapped.
std::string MappedFile::changed_since_open() const { return ""; }

MappedFile::~MappedFile() {
    if (data_ && data_ != kEmpty) UnmapViewOfFile(data_);
    if (mapping_handle_) CloseHandle(mapping_handle_);
    if (file_handle_) CloseHandle(file_handle_);
}

#else

namespace {

const char * file_kind(mode_t mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    return "not a regular file";
}

FileIdentity identity_of(const struct stat & st) {
    FileIdentity id;
    id.device = static_cast<uint64_t>(st.st_dev);
    id.inode = static_cast<uint64_t>(st.st_ino);
    id.size = static_cast<uint64_t>(st.st_size);
#if defined(__APPLE__)
    id.mtime_ns = static_cast<int64_t>(st.st_mtimespec.tv_sec) * 1000000000 + st.st_mtimespec.tv_nsec;
#else
    id.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
#endif
    return id;
}

}  // namespace

MappedFile::MappedFile(const std::string & path) : path_(path) {
    // Never block in open(): a FIFO would wait for a writer forever. O_NONBLOCK changes nothing
    // for the regular files that get past the check below.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw Error(ErrorCode::Io, path + ": cannot open: " + std::strerror(errno), path);
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        int err = errno;
        ::close(fd);
        throw Error(ErrorCode::Io, path + ": cannot stat: " + std::strerror(err), path);
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        throw Error(ErrorCode::Io, path + ": is " + file_kind(st.st_mode) + ", not a regular file", path);
    }
    identity_ = identity_of(st);
    size_ = uint64_t(st.st_size);
    if (size_ > uint64_t(SIZE_MAX)) {
        ::close(fd);
        throw Error(ErrorCode::Io, path + ": cannot map: file is larger than the address space", path);
    }
    if (size_ == 0) {
        ::close(fd);
        data_ = kEmpty;
        return;
    }
    void * addr = ::mmap(nullptr, size_t(size_), PROT_READ, MAP_SHARED, fd, 0);
    int err = errno;
    ::close(fd);  // the mapping keeps the file alive
    if (addr == MAP_FAILED) throw Error(ErrorCode::Io, path + ": cannot map: " + std::strerror(err), path);
    data_ = static_cast<const uint8_t *>(addr);
}

std::string MappedFile::changed_since_open() const {
    struct stat st;
    if (::stat(path_.c_str(), &st) != 0) return std::string("it is gone (") + std::strerror(errno) + ")";
    const FileIdentity now = identity_of(st);
    if (now.device != identity_.device || now.inode != identity_.inode) return "it was replaced by another file";
    if (now.size != identity_.size) {
        return "its size changed from " + std::to_string(identity_.size) + " to " + std::to_string(now.size) + " bytes";
    }
    if (now.mtime_ns != identity_.mtime_ns) return "it was modified (its modification time changed)";
    return "";
}

MappedFile::~MappedFile() {
    if (data_ && data_ != kEmpty) ::munmap(const_cast<uint8_t *>(data_), size_t(size_));
}

#endif

void MappedFile::drop_pages(uint64_t offset, uint64_t size) const {
#if defined(__linux__) || defined(__APPLE__)
    if (!data_ || size == 0 || offset >= size_) return;
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    const uint64_t end = std::min(size_, offset + size);
    const uint64_t first = (offset + page - 1) / page * page;  // whole pages inside the range
    const uint64_t last = end / page * page;
    if (last > first) madvise(const_cast<uint8_t *>(data_) + first, static_cast<size_t>(last - first), MADV_DONTNEED);
#else
    (void)offset;
    (void)size;
#endif
}

}  // namespace sd
