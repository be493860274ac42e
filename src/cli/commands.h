// commands.h - the entry point of each `vlft COMMAND`. argv[0] is the
// command's name; the return value is the process exit code.
#ifndef VLFT_COMMANDS_H
#define VLFT_COMMANDS_H

enum { EXIT_OK = 0, EXIT_BAD_INPUT = 1, EXIT_USAGE = 2 };

int command_train(int argc, char **argv);
int command_init_tiny(int argc, char **argv);
int command_info(int argc, char **argv);
int command_tokenize(int argc, char **argv);
int command_data(int argc, char **argv);
int command_tensors(int argc, char **argv);
int command_export(int argc, char **argv);
int command_chat(int argc, char **argv);
// hidden, test-only: the trainer on a toy regression model
int command_train_toy(int argc, char **argv);
int command_model_step(int argc, char **argv);
int command_gemm_peak(int argc, char **argv);
int command_preprocess(int argc, char **argv);
int command_demo_data(int argc, char **argv);
int command_cuda_info(int argc, char **argv);

#endif
