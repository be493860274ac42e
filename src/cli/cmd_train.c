// vlft train RECIPE.yaml: fine-tune as a LLaMA-Factory recipe says.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../train/recipe.h"
#include "../train/sft.h"
#include "../base/error.h"
#include "../dist/comm.h"
#include "../dist/deepspeed_config.h"
#include "../train/trainer.h"
#include "commands.h"

static void usage(FILE *out) {
    fprintf(out, "usage: vlft train [--print-config] [--device auto|cpu|cuda] RECIPE.yaml\n\n"
                 "Runs supervised fine-tuning with LLaMA-Factory's YAML keys (stage sft; finetuning_type lora, full\n"
                 "or freeze). Writes the adapter or the full weights, checkpoint-N folders, trainer_log.jsonl,\n"
                 "all_results.json and training_loss.png into output_dir.\n"
                 "--print-config  print the resolved recipe (every key, defaults filled in) and exit\n"
                 "--device D      where to train, overriding the recipe's device key: auto (default: the GPU\n"
                 "                when this vlft was built with `make CUDA=1` and one is there), cpu, cuda\n"
                 "--log-updates FILE   append one JSON line per optimizer update (full-precision loss, lr,\n"
                 "                     grad_norm) to FILE, for comparisons with a reference\n"
                 "--save-initial DIR   write the trainable weights as they are before the first update\n");
}

static void write_update(void *user, const TrainUpdate *u) {
    fprintf((FILE *)user, "{\"step\": %d, \"loss\": %.17g, \"lr\": %.17g, \"grad_norm\": %.17g, \"epoch\": %.17g}\n",
            u->step, u->loss, u->lr, u->grad_norm, u->epoch);
    fflush((FILE *)user);
}

// The ZeRO stage: the recipe's zero_stage, else its DeepSpeed file's
// (relative paths as LLaMA-Factory resolves them: from the working folder).
static int zero_stage_of(const Recipe *recipe, int *stage, Error *err) {
    *stage = 0;
    if (recipe->zero_stage >= 0) {
        *stage = recipe->zero_stage;
        return 0;
    }
    if (recipe->deepspeed == NULL || recipe->deepspeed[0] == '\0') return 0;
    return deepspeed_zero_stage(recipe->deepspeed, stage, err);
}

// An error on one rank ends every rank (comm_abort prints which rank);
// with one process it is the usual one line.
static int fail(Comm *comm, const char *message, int code) {
    if (comm_is_distributed(comm)) {
        char line[1200];
        snprintf(line, sizeof line, "vlft train: %s", message);
        comm_abort(comm, code, line);
    }
    fprintf(stderr, "vlft train: %s\n", message);
    return code;
}

static int train_with_comm(Comm *comm, int argc, char **argv);

int command_train(int argc, char **argv) {
    // MPI starts only when mpirun launched this process
    Error err;
    Comm *comm = comm_init(&argc, &argv, &err);
    if (comm == NULL) {
        fprintf(stderr, "vlft train: %s\n", err.message);
        return EXIT_BAD_INPUT;
    }
    int code = train_with_comm(comm, argc, argv);
    comm_finalize(comm);
    return code;
}

static int train_with_comm(Comm *comm, int argc, char **argv) {
    int rank = comm_rank(comm);
    const char *path = NULL, *log_updates = NULL, *save_initial = NULL, *device = NULL;
    int print_config = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return EXIT_OK;
        }
        if (strcmp(argv[i], "--print-config") == 0) print_config = 1;
        else if (strcmp(argv[i], "--log-updates") == 0 && i + 1 < argc) log_updates = argv[++i];
        else if (strcmp(argv[i], "--save-initial") == 0 && i + 1 < argc) save_initial = argv[++i];
        else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) device = argv[++i];
        else if (argv[i][0] == '-') {
            fprintf(stderr, "vlft train: unknown option '%s'\n", argv[i]);
            return EXIT_USAGE;
        } else if (path == NULL) path = argv[i];
        else {
            fprintf(stderr, "vlft train: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (path == NULL) {
        usage(stderr);
        return EXIT_USAGE;
    }
    Recipe recipe;
    Error err;
    if (recipe_load(&recipe, path, rank == 0 ? stderr : NULL, &err) != 0) return fail(comm, err.message, EXIT_BAD_INPUT);
    if (device) {  // --device overrides the recipe's device key
        free(recipe.device);
        recipe.device = strdup(device);
    }
    if (recipe_validate(&recipe, path, &err) != 0) {
        recipe_free(&recipe);
        return fail(comm, err.message, EXIT_BAD_INPUT);
    }
    if (print_config) {
        recipe_print(&recipe, stdout);
        recipe_free(&recipe);
        return EXIT_OK;
    }
    // Everything that can be wrong with the recipe, the model folder or the
    // data is found here, before the first step.
    TrainerOptions options;
    char resume[4096] = "";
    SftSession session;
    int rc = trainer_options_from_recipe(&options, &recipe, &err);
    if (rc == 0) rc = zero_stage_of(&recipe, &options.zero_stage, &err);
    if (rc == 0) rc = trainer_check_output_dir(&options, resume, sizeof resume, &err);
    if (rc == 0) rc = sft_open(&session, &recipe, rank == 0 ? stderr : NULL, &err);
    if (rc != 0) {
        recipe_free(&recipe);
        return fail(comm, err.message, EXIT_BAD_INPUT);
    }
    options.comm = comm;
    options.progress = rank == 0;
    if (resume[0] && rank == 0) fprintf(stderr, "resuming from %s\n", resume);
    if (rank == 0 && llava_on_device(session.model)) fprintf(stderr, "device: %s\n", llava_device_name(session.model));
    TrainModel model = sft_train_model(&session);
    FILE *updates = NULL;
    if (rc == 0 && save_initial && rank == 0) rc = model.save_weights(model.ctx, save_initial, &err);
    if (rc == 0 && log_updates && rank == 0 && (updates = fopen(log_updates, "a")) == NULL)
        rc = error_set(&err, "%s: cannot open for writing", log_updates);
    if (rc != 0) {
        sft_close(&session);
        recipe_free(&recipe);
        return fail(comm, err.message, EXIT_BAD_INPUT);
    }
    if (updates) {
        options.on_update = write_update;
        options.user = updates;
    }
    int *train_ids = malloc(sizeof(int) * (size_t)session.dataset.train.n_samples);
    int *eval_ids = malloc(sizeof(int) * (size_t)(session.dataset.eval.n_samples + 1));
    for (int i = 0; i < session.dataset.train.n_samples; i++) train_ids[i] = i;
    for (int i = 0; i < session.dataset.eval.n_samples; i++) eval_ids[i] = i;
    rc = trainer_run(&options, &model, train_ids, session.dataset.train.n_samples, eval_ids,
                     session.dataset.eval.n_samples, &err);
    free(train_ids);
    free(eval_ids);
    if (updates) fclose(updates);
    sft_close(&session);
    int exit_code = EXIT_OK;
    if (rc < 0) {
        exit_code = fail(comm, err.message, EXIT_BAD_INPUT);
    } else if (rc == TRAIN_INTERRUPTED) {
        if (rank == 0) fprintf(stderr, "vlft train: interrupted; resume with resume_from_checkpoint: true\n");
        exit_code = 130;
    } else if (rank == 0) {
        int lora = strcmp(recipe.finetuning_type, "lora") == 0;
        printf("%s written to %s/%s\n", lora ? "adapter" : "model", recipe.output_dir,
               lora ? "adapter_model.safetensors" : "");
        if (recipe.plot_loss) printf("loss plot: %s/training_loss.png\n", recipe.output_dir);
    }
    recipe_free(&recipe);
    return exit_code;
}
