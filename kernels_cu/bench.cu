// Helper kernels of the kernel benchmarks (impbench/bench/timing.py).
#include "common.cuh"

// Keeps the GPU busy for `cycles` SM clocks on one thread, so that the host can queue every timed
// launch behind it and no host launch gap lands between the events around a timed kernel.
extern "C" __global__ void bench_spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
}
