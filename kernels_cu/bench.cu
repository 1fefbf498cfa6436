// Helper kernels of the kernel benchmarks (impbench/bench/timing.py).
#include "common.cuh"

// Keeps the GPU busy for `cycles` SM clocks on one thread, so that the host can queue every timed
// launch behind it and no host launch gap lands between the events around a timed kernel.
extern "C" __global__ void bench_spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
}

// The planted slowdown of an arm's `delay_us` (impbench/arms.py, tests of the CI gate only): one thread
// waits `ns` nanoseconds of the global timer, a fixed delay whatever the SM clock. The first statement
// is pdl_entry(), as in every engine kernel, so it also waits for the kernel before it.
extern "C" __global__ void bench_delay(long long ns) {
    pdl_entry();
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while ((long long)(now - start) < ns);
}
