// vlft - fine-tune LLaVA-format vision-language models the LLaMA-Factory way.
//
// Command dispatch only: each command parses its flags, calls into the
// modules, prints the one-line error a module reports, and returns
//   0 success, 1 bad input (files, values), 2 bad usage (flags).
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "cli/commands.h"

#ifndef VLFT_VERSION
#define VLFT_VERSION "0.1.0"
#endif

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} Command;

static const Command commands[] = {
    {"train", command_train, "fine-tune a model as a LLaMA-Factory YAML recipe says"},
    {"init-tiny", command_init_tiny, "write a small random LLaVA model in Hugging Face layout"},
    {"export", command_export, "merge a LoRA adapter into its base model and write HF shards"},
    {"chat", command_chat, "talk to a model (and its adapter): one answer to a prompt, or a conversation"},
    {"info", command_info, "check a model folder and print its summary"},
    {"data", command_data, "preview a recipe's encoded training samples ('data preview RECIPE.yaml')"},
    {"_tokenize", command_tokenize, "encode JSON-string lines with a model's tokenizer (tests, benchmarks)"},
    {"tensors", command_tensors, "list (or copy) the tensors of a safetensors file or folder"},
    // names starting with '_' are for tests and left out of --help
    {"_train-toy", command_train_toy, "train a toy regression model (tests)"},
    {"_model-step", command_model_step, "one forward/backward on a batch file (tests, benchmarks)"},
    {"_cuda-info", command_cuda_info, "the GPU this vlft would use, or why none (exit 77)"},
    {"_gemm-peak", command_gemm_peak, "oneDNN bf16 / f32 matmul GFLOP/s on this machine (benchmarks)"},
    {"preprocess", command_preprocess, "run the image pipeline on files and save each stage"},
    {"demo-data", command_demo_data, "write a procedurally drawn image dataset (mllm_demo format)"},
};

static void print_help(FILE *out) {
    fprintf(out, "usage: vlft COMMAND [ARGS]\n\nFine-tune LLaVA-format vision-language models (Yi-VL) from "
                 "LLaMA-Factory recipes.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (commands[i].name[0] != '_') fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n'vlft COMMAND --help' describes one command; 'vlft --version' prints the version.\n");
}

// libgomp reads OMP_WAIT_POLICY once, when it is loaded, before main. Its
// default lets idle threads spin, which on a small machine steals the cores
// from the threads doing the work (OpenBLAS's included): the tiny demo model's
// steps ran 8x slower. So unless the user chose a policy, vlft restarts
// itself once with the passive one.
static void prefer_passive_openmp_threads(char **argv) {
    if (getenv("OMP_WAIT_POLICY") != NULL) return;
    if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
    execv("/proc/self/exe", argv);
    // exec failed: carry on with the default policy
}

int main(int argc, char **argv) {
    prefer_passive_openmp_threads(argv);
    // Past a file-size limit (ulimit -f, a quota) the default SIGXFSZ kills
    // the process mid-write; ignored, write() fails with EFBIG instead, and
    // the atomic writers report it and leave the previous files in place.
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2) {
        print_help(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        print_help(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("vlft %s\n", VLFT_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "vlft: unknown command '%s' (see 'vlft --help')\n", argv[1]);
    return 2;
}
