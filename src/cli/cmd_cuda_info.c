// vlft _cuda-info: whether this vlft has the CUDA backend and a GPU to run
// it on (tests decide to skip with it). Exit 0 and the device's name, or 77
// and why not.
#include <stdio.h>

#include "commands.h"
#ifdef VLFT_CUDA
#include "../kernels/cuda/cuda.h"
#endif

int command_cuda_info(int argc, char **argv) {
    (void)argc, (void)argv;
#ifdef VLFT_CUDA
    CudaContext *ctx;
    Error err;
    if (cuda_open(0, &ctx, &err) != 0) {
        printf("no GPU: %s\n", err.message);
        return 77;
    }
    printf("%s\n", cuda_device_name(ctx));
    cuda_close(ctx);
    return EXIT_OK;
#else
    printf("this vlft was built without CUDA (make CUDA=1)\n");
    return 77;
#endif
}
