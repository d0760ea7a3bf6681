// sim.cc — the fiber scheduler, kernel registry, memory and C API of the CPU emulation
// (see qvl_sim.h). The Go tests build this file and kernels.cc into a shared library and load
// it with purego; every entry point runs the emulation on a fresh thread with all signals
// blocked, so the Go runtime's signals never land on a fiber stack.
#include "qvl_sim.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

// The bounds of the section that holds every __shared__ variable (qvl_sim.h), from the linker.
extern "C" unsigned char __start_qvl_smem[], __stop_qvl_smem[];

namespace qvlsim {

uint3_* g_tid;
uint3_ g_bid, g_bdim, g_gdim;

namespace {

constexpr size_t kStack = 256 << 10;
constexpr int kMaxThreads = 1024;

// A fiber starts on its own stack with setcontext once; after that, switches between the
// scheduler and fibers are _setjmp/_longjmp, which do not save the signal mask (swapcontext
// makes a system call per switch).
struct Fiber {
    ucontext_t ctx;
    jmp_buf jb;
    bool started = false;
    char* stack = nullptr;
    uint3_ tid;
    int lin = 0;
    bool done = false;
};

struct Barrier {
    int arrived = 0;
    unsigned gen = 0;
};

std::map<std::string, Invoker>& registry() {
    static std::map<std::string, Invoker> r;
    return r;
}

jmp_buf g_sched;
std::vector<Fiber> g_fibers;
int g_nthreads, g_live, g_cur;
int g_warp_live[kMaxThreads / 32];
Barrier g_block_bar;
Barrier g_warp_bar[kMaxThreads / 32];
uint64_t g_xchg[kMaxThreads / 32][32];
unsigned g_mma_a[kMaxThreads / 32][32][4];
unsigned g_mma_b[kMaxThreads / 32][32][2];
const Invoker* g_invoker;
void** g_params;
long g_events;  // arrivals, releases and exits: progress made by the block
std::string g_error;
std::vector<unsigned char> g_dyn;

// The schedule (qvlsim_set_schedule): the order in which the scheduler resumes a block's
// fibers in each round, and runs a grid's blocks. Forward is index order. Reverse and shuffle
// change which thread reaches a point first between two synchronisation points, so a kernel
// whose result depends on that order — a read of shared memory that another thread writes
// with no barrier between them, a warp that relies on its lanes running in step without
// __syncwarp, a block that assumes an earlier block ran first — gives a different answer (or
// reads poisoned memory) under one of them, where on a GPU it would be a race.
enum { kForward = 0, kReverse = 1, kShuffle = 2 };
int g_sched_mode = kForward;
uint64_t g_sched_rng = 1;

uint64_t sched_next() {  // splitmix64
    uint64_t z = (g_sched_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// sched_order fills ord with 0..n-1 in the schedule's order.
void sched_order(std::vector<int>& ord, int n) {
    ord.resize(n);
    for (int i = 0; i < n; i++) ord[i] = g_sched_mode == kReverse ? n - 1 - i : i;
    if (g_sched_mode == kShuffle)
        for (int i = n - 1; i > 0; i--) std::swap(ord[i], ord[(int)(sched_next() % (uint64_t)(i + 1))]);
}

void fail(const std::string& msg) {
    if (g_error.empty()) g_error = msg;
}

// ── embed.cu's primitives: the cp.async state of each thread of the running block ──────────
struct CpCopy {
    unsigned char* dst;
    unsigned char bytes[16];
    bool early;  // landed at issue
};
struct CpThread {
    std::vector<CpCopy> open;                 // issued since the last commit
    std::vector<std::vector<CpCopy>> groups;  // committed, oldest first
};
CpThread g_cp[kMaxThreads];
uint64_t g_cp_seq;  // copies issued since the library loaded (the landing choice hashes it)

// The visibility rules of cp.async, checked per 16-byte chunk of shared memory that cp.async
// writes (ldmatrix reads the same chunks): a chunk may be read by ldmatrix only after its
// copy's group was retired by the issuing thread's wait and, unless the issuer reads it
// itself, a __syncthreads completed after that wait; a chunk may be the target of a new
// copy only when no other warp read it since the last __syncthreads, and no copy to it is
// still pending. Barrier epochs are g_block_bar.gen.
struct CpChunk {
    int issuer = -1;         // thread of the latest copy
    bool pending = false;    // its group not yet retired
    unsigned retired = 0;    // epoch of the wait that retired it
    unsigned read_gen = 0;   // epoch of the reads in readers
    unsigned readers = 0;    // warps that read it in epoch read_gen
};
std::map<uintptr_t, CpChunk> g_cp_chunks;

void cp_land(const CpCopy& c) { std::memcpy(c.dst, c.bytes, 16); }

void yield();

// cp_fail reports a broken rule and stops the thread here (the scheduler ends the launch), so
// that it does not run on with the values of a broken protocol.
void cp_fail(const char* msg) {
    fail(msg);
    yield();
}

bool cp_pending(int lin) {
    if (!g_cp[lin].open.empty()) return true;
    for (const auto& g : g_cp[lin].groups)
        if (!g.empty()) return true;
    return false;
}

void cp_reset(int n) {
    for (int i = 0; i < n; i++) {
        g_cp[i].open.clear();
        g_cp[i].groups.clear();
    }
    g_cp_chunks.clear();
}
// ── end of embed.cu's primitives ─────────────────────────────────────────────────────────────

void yield() {
    if (_setjmp(g_fibers[g_cur].jb) == 0) _longjmp(g_sched, 1);
}

void fiber_main() {
    (*g_invoker)(g_params);
    Fiber& f = g_fibers[g_cur];
    f.done = true;
    g_live--;
    g_warp_live[f.lin / 32]--;
    g_events++;
    if (g_block_bar.arrived > 0) {
        fail("a thread exited while others wait at __syncthreads (divergent barrier)");
    }
    if (g_warp_bar[f.lin / 32].arrived > 0) {
        fail("a lane exited while others of its warp wait at a warp-synchronous operation");
    }
    if (cp_pending(f.lin)) fail("a thread exited with cp.async copies not waited for");  // embed.cu's primitives
    _longjmp(g_sched, 1);
}

void wait_barrier(Barrier& b, int participants) {
    const unsigned my = b.gen;
    g_events++;
    if (++b.arrived >= participants) {
        b.arrived = 0;
        b.gen++;
        return;
    }
    while (b.gen == my) {
        if (!g_error.empty()) return;
        yield();
    }
}

}  // namespace

Registrar::Registrar(const char* name, Invoker inv) { registry()[name] = std::move(inv); }

int lane_id() { return g_fibers[g_cur].lin & 31; }

void check_mask(unsigned mask) {
    if (mask != 0xffffffffu) fail("partial-warp mask in a warp-synchronous operation (the emulation supports full warps only)");
}

void syncthreads() { wait_barrier(g_block_bar, g_live); }

void syncwarp() {
    const int w = g_fibers[g_cur].lin / 32;
    if (g_warp_live[w] != 32) fail("warp-synchronous operation after some lanes of the warp exited");
    wait_barrier(g_warp_bar[w], g_warp_live[w]);
}

void yield_spin() {
    // A spin wait makes no progress by itself: if nothing else moves, the scheduler reports a deadlock.
    yield();
}

uint64_t warp_exchange(uint64_t v, int src) {
    const int w = g_fibers[g_cur].lin / 32, lane = g_fibers[g_cur].lin & 31;
    g_xchg[w][lane] = v;
    syncwarp();
    const uint64_t r = src < 0 ? v : g_xchg[w][src];
    syncwarp();
    return r;
}

unsigned warp_ballot(bool pred) {
    const int w = g_fibers[g_cur].lin / 32, lane = g_fibers[g_cur].lin & 31;
    g_xchg[w][lane] = pred ? 1 : 0;
    syncwarp();
    unsigned m = 0;
    for (int i = 0; i < 32; i++) m |= (g_xchg[w][i] ? 1u : 0u) << i;
    syncwarp();
    return m;
}

static float bf16lo(unsigned w) {
    unsigned u = w << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
static float bf16hi(unsigned w) {
    unsigned u = w & 0xffff0000u;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// mma_bf16_16816 reassembles A (16×16), B (16×8) from the 32 lanes' fragments with the layout
// of the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type") and returns
// each lane its part of D = A·B + D.
void mma_bf16_16816(float* d, const unsigned* a, const unsigned* b) {
    const int w = g_fibers[g_cur].lin / 32, lane = g_fibers[g_cur].lin & 31;
    for (int i = 0; i < 4; i++) g_mma_a[w][lane][i] = a[i];
    for (int i = 0; i < 2; i++) g_mma_b[w][lane][i] = b[i];
    syncwarp();
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; l++) {
        const int g = l >> 2, t = l & 3;
        const unsigned* fa = g_mma_a[w][l];
        A[g][2 * t] = bf16lo(fa[0]);
        A[g][2 * t + 1] = bf16hi(fa[0]);
        A[g + 8][2 * t] = bf16lo(fa[1]);
        A[g + 8][2 * t + 1] = bf16hi(fa[1]);
        A[g][2 * t + 8] = bf16lo(fa[2]);
        A[g][2 * t + 9] = bf16hi(fa[2]);
        A[g + 8][2 * t + 8] = bf16lo(fa[3]);
        A[g + 8][2 * t + 9] = bf16hi(fa[3]);
        const unsigned* fb = g_mma_b[w][l];
        B[2 * t][g] = bf16lo(fb[0]);
        B[2 * t + 1][g] = bf16hi(fb[0]);
        B[2 * t + 8][g] = bf16lo(fb[1]);
        B[2 * t + 9][g] = bf16hi(fb[1]);
    }
    syncwarp();
    const int g = lane >> 2, t = lane & 3;
    const int rows[4] = {g, g, g + 8, g + 8};
    const int cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; i++) {
        float s = d[i];
        for (int k = 0; k < 16; k++) s += A[rows[i]][k] * B[k][cols[i]];
        d[i] = s;
    }
}

unsigned char* dyn_smem() { return g_dyn.data(); }

// ── embed.cu's primitives (see qvl_sim.h) ─────────────────────────────────────────────────────
void cp_async16(void* dst, const void* src, int src_bytes) {
    if (((uintptr_t)dst & 15) != 0 || ((uintptr_t)src & 15) != 0) {
        cp_fail("cp.async of 16 bytes with an address that is not 16-byte aligned");
        return;
    }
    if (src_bytes < 0 || src_bytes > 16) {
        cp_fail("cp.async src_bytes outside [0, 16]");
        return;
    }
    const int lin = g_fibers[g_cur].lin;
    CpChunk& ch = g_cp_chunks[(uintptr_t)dst];
    if (ch.pending) {
        cp_fail("cp.async to shared memory that an earlier cp.async (not yet waited for) also targets");
        return;
    }
    if (ch.read_gen == g_block_bar.gen && (ch.readers & ~(1u << (lin / 32))) != 0u) {
        cp_fail("cp.async overwrites shared memory that another warp read since the last __syncthreads");
        return;
    }
    ch.issuer = lin;
    ch.pending = true;
    CpCopy c;
    c.dst = static_cast<unsigned char*>(dst);
    std::memset(c.bytes, 0, 16);
    if (src_bytes > 0) std::memcpy(c.bytes, src, (size_t)src_bytes);
    uint64_t h = ++g_cp_seq * 0x9e3779b97f4a7c15ull;  // splitmix64's finaliser: which end of the window
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
    h ^= h >> 31;
    c.early = (h & 1) != 0;
    if (c.early) cp_land(c);  // lands at issue; the group still holds it until the wait
    g_cp[lin].open.push_back(c);
}

void cp_async_commit() {
    CpThread& t = g_cp[g_fibers[g_cur].lin];
    t.groups.push_back(std::move(t.open));
    t.open.clear();
}

void cp_async_wait(int n) {
    CpThread& t = g_cp[g_fibers[g_cur].lin];
    const size_t keep = n < 0 ? 0 : (size_t)n;
    size_t land = t.groups.size() > keep ? t.groups.size() - keep : 0;
    for (size_t i = 0; i < land; i++)
        for (const CpCopy& c : t.groups[i]) {
            if (!c.early) cp_land(c);
            CpChunk& ch = g_cp_chunks[(uintptr_t)c.dst];
            ch.pending = false;
            ch.retired = g_block_bar.gen;
        }
    t.groups.erase(t.groups.begin(), t.groups.begin() + (long)land);
}

void ldmatrix_x4(unsigned* r, const void* row_addr) {
    if (((uintptr_t)row_addr & 15) != 0) cp_fail("ldmatrix row address not 16-byte aligned");
    const int lane = lane_id(), lin = g_fibers[g_cur].lin;
    auto it = g_cp_chunks.find((uintptr_t)row_addr);
    if (it != g_cp_chunks.end()) {
        CpChunk& ch = it->second;
        if (ch.pending) cp_fail("ldmatrix reads shared memory whose cp.async was not waited for");
        else if (ch.issuer != lin && ch.retired == g_block_bar.gen)
            cp_fail("ldmatrix reads shared memory that another thread's cp.async wrote, with no __syncthreads after its wait");
        if (ch.read_gen != g_block_bar.gen) {
            ch.read_gen = g_block_bar.gen;
            ch.readers = 0;
        }
        ch.readers |= 1u << (lin / 32);
    }
    for (int j = 0; j < 4; j++) {
        const uint64_t a = warp_exchange((uint64_t)(uintptr_t)row_addr, 8 * j + lane / 4);
        if (!g_error.empty()) {
            r[j] = 0;
            continue;
        }
        std::memcpy(&r[j], (const unsigned char*)(uintptr_t)a + 4 * (lane % 4), 4);
    }
}
// ── end of embed.cu's primitives ─────────────────────────────────────────────────────────────

// ── sampling.cu's primitives (see qvl_sim.h) ──────────────────────────────────────────────────
void check_align16(const void* p) {
    if (((uintptr_t)p & 15) != 0) fail("a 16-byte vector load from an address that is not 16-byte aligned");
}

// The count of a generation of the block barrier is published by its last arrival into a slot
// that lives two generations, so a thread released early cannot overwrite it before the others
// read it (the next generation cannot complete without them).
static int g_count_acc;
static int g_count_res[2];

int syncthreads_count(int pred) {
    Barrier& b = g_block_bar;
    const unsigned my = b.gen;
    if (b.arrived == 0) g_count_acc = 0;
    if (pred) g_count_acc++;
    if (b.arrived + 1 >= g_live) g_count_res[my & 1] = g_count_acc;
    wait_barrier(b, g_live);
    return g_count_res[my & 1];
}
// ── end of sampling.cu's primitives ──────────────────────────────────────────────────────────

namespace {

// run_block runs one block of the current launch to completion; false on an emulation error.
bool run_block() {
    const int n = g_nthreads;
    if ((int)g_fibers.size() < n) g_fibers.resize(n);
    g_live = n;
    for (int w = 0; w < (n + 31) / 32; w++) {
        g_warp_live[w] = n - 32 * w < 32 ? n - 32 * w : 32;
        g_warp_bar[w] = Barrier{};
    }
    g_block_bar = Barrier{};
    cp_reset(n);  // embed.cu's primitives
    // CUDA leaves shared memory uninitialised: poison it so that reads before writes show.
    std::memset(g_dyn.data(), 0xff, g_dyn.size());
    std::memset(__start_qvl_smem, 0xff, (size_t)(__stop_qvl_smem - __start_qvl_smem));
    for (int i = 0; i < n; i++) {
        Fiber& f = g_fibers[i];
        if (!f.stack) f.stack = static_cast<char*>(std::malloc(kStack));
        f.done = false;
        f.started = false;
        f.lin = i;
        f.tid = {i % g_bdim.x, (i / g_bdim.x) % g_bdim.y, i / (g_bdim.x * g_bdim.y)};
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = kStack;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
    }
    static std::vector<int> ord;
    while (g_live > 0) {
        const long before = g_events;
        sched_order(ord, n);
        for (int k = 0; k < n; k++) {
            const int i = ord[k];
            if (g_fibers[i].done) continue;
            g_cur = i;
            g_tid = &g_fibers[i].tid;
            if (_setjmp(g_sched) == 0) {
                if (!g_fibers[i].started) {
                    g_fibers[i].started = true;
                    setcontext(&g_fibers[i].ctx);
                }
                _longjmp(g_fibers[i].jb, 1);
            }
            if (!g_error.empty()) return false;
        }
        if (g_live > 0 && g_events == before) {
            fail("deadlock: every live thread waits and none can proceed");
            return false;
        }
    }
    return true;
}

struct LaunchArgs {
    const Invoker* inv;
    unsigned grid[3], block[3];
    unsigned smem;
    void** params;
    int ok;
};

void* launch_thread(void* p) {
    auto* a = static_cast<LaunchArgs*>(p);
    g_invoker = a->inv;
    g_params = a->params;
    g_bdim = {a->block[0], a->block[1], a->block[2]};
    g_gdim = {a->grid[0], a->grid[1], a->grid[2]};
    g_nthreads = (int)(a->block[0] * a->block[1] * a->block[2]);
    g_dyn.assign(a->smem + 16, 0);
    g_error.clear();
    a->ok = 1;
    const long nb = (long)a->grid[0] * a->grid[1] * a->grid[2];
    if (g_sched_mode == kForward || nb > (1l << 24)) {
        for (unsigned z = 0; z < a->grid[2] && a->ok; z++)
            for (unsigned y = 0; y < a->grid[1] && a->ok; y++)
                for (unsigned x = 0; x < a->grid[0] && a->ok; x++) {
                    g_bid = {x, y, z};
                    if (!run_block()) a->ok = 0;
                }
        return nullptr;
    }
    std::vector<int> blocks;
    sched_order(blocks, (int)nb);
    for (long k = 0; k < nb && a->ok; k++) {
        const unsigned b = (unsigned)blocks[k];
        g_bid = {b % a->grid[0], (b / a->grid[0]) % a->grid[1], b / (a->grid[0] * a->grid[1])};
        if (!run_block()) a->ok = 0;
    }
    return nullptr;
}

}  // namespace
}  // namespace qvlsim

extern "C" {

// qvlsim_launch runs kernel name over the grid; params holds one 8-byte slot per kernel
// parameter (as cuLaunchKernel's kernelParams point to). It returns 0, or -1 with a message
// in err.
int qvlsim_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                  unsigned smem, const uint64_t* vals, int nvals, char* err, int errlen) {
    using namespace qvlsim;
    // The emulation's state is global: one launch at a time, whatever the callers do.
    static std::mutex launch_mu;
    std::lock_guard<std::mutex> lock(launch_mu);
    auto report = [&](const std::string& m) {
        std::snprintf(err, errlen, "%s", m.c_str());
        return -1;
    };
    auto it = registry().find(name);
    if (it == registry().end()) return report(std::string("no kernel named ") + name);
    const unsigned n = bx * by * bz;
    if (n == 0 || n > (unsigned)kMaxThreads || n % 32 != 0)
        return report("block of " + std::to_string(n) + " threads: the emulation needs a positive multiple of 32 up to 1024");
    if (gx == 0 || gy == 0 || gz == 0) return report("empty grid");
    std::vector<uint64_t> slots(vals, vals + nvals);
    std::vector<void*> params(nvals);
    for (int i = 0; i < nvals; i++) params[i] = &slots[i];
    LaunchArgs a{&it->second, {gx, gy, gz}, {bx, by, bz}, smem, params.data(), 0};
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 16 << 20);
    sigset_t all;
    sigfillset(&all);
    pthread_attr_setsigmask_np(&attr, &all);
    pthread_t th;
    if (pthread_create(&th, &attr, launch_thread, &a) != 0) return report("pthread_create failed");
    pthread_join(th, nullptr);
    pthread_attr_destroy(&attr);
    if (!a.ok) return report(std::string(name) + ": " + g_error);
    return 0;
}

// qvlsim_set_schedule chooses the order of threads and blocks (0 forward, 1 reverse, 2 a
// shuffle drawn from seed, new in every round and launch); it returns -1 for an unknown mode.
int qvlsim_set_schedule(int mode, uint64_t seed) {
    using namespace qvlsim;
    if (mode < kForward || mode > kShuffle) return -1;
    g_sched_mode = mode;
    g_sched_rng = seed;
    return 0;
}

int qvlsim_kernel_count() { return (int)qvlsim::registry().size(); }

// qvlsim_kernel_name returns the i-th registered kernel's name (sorted).
const char* qvlsim_kernel_name(int i) {
    auto it = qvlsim::registry().begin();
    std::advance(it, i);
    return it->first.c_str();
}

uint64_t qvlsim_alloc(uint64_t bytes) {
    void* p = nullptr;
    if (posix_memalign(&p, 256, bytes ? bytes : 1) != 0) return 0;
    std::memset(p, 0xa5, bytes);
    return (uint64_t)(uintptr_t)p;
}

void qvlsim_free(uint64_t p) { std::free((void*)(uintptr_t)p); }

void qvlsim_htod(uint64_t dst, const void* src, uint64_t n) { std::memcpy((void*)(uintptr_t)dst, src, n); }
void qvlsim_dtoh(void* dst, uint64_t src, uint64_t n) { std::memcpy(dst, (const void*)(uintptr_t)src, n); }

void qvlsim_memset32(uint64_t dst, uint32_t v, uint64_t n) {
    auto* p = (uint32_t*)(uintptr_t)dst;
    for (uint64_t i = 0; i < n; i++) p[i] = v;
}

// qvlsim_linear is the reference Y[m,n] = X[m,k]·W[n,k]ᵀ that stands in for cuBLASLt: bf16
// (bf16 != 0) or f32 operands, f32 accumulation, f32 output.
void qvlsim_linear(int m, int n, int k, int bf16, uint64_t x, uint64_t w, uint64_t y) {
    auto* Y = (float*)(uintptr_t)y;
    auto load = [&](uint64_t base, long i) -> float {
        if (bf16) {
            unsigned u = (unsigned)((const uint16_t*)(uintptr_t)base)[i] << 16;
            float f;
            std::memcpy(&f, &u, 4);
            return f;
        }
        return ((const float*)(uintptr_t)base)[i];
    };
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            float s = 0;
            for (int c = 0; c < k; c++) s += load(x, (long)i * k + c) * load(w, (long)j * k + c);
            Y[(long)i * n + j] = s;
        }
}

}  // extern "C"
