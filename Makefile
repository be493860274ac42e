# vlft build. `make` builds build/vlft; `make test` builds and runs every test;
# `make asan` builds and tests under AddressSanitizer + UndefinedBehaviorSanitizer;
# `make debug` builds without optimisation; `make fuzz` runs the fuzz targets.

CC      ?= cc
PKGS    := yaml-0.1 libcjson libpng libjpeg libwebpdemux openblas cairo fontconfig
# OpenBLAS built on OpenMP shares vlft's one thread pool; the pthread build
# would run its own threads against OpenMP's spinning ones on the same cores
# (6x slower steps measured). Prefer it, and make the loader pick it too.
BLAS_PC := $(firstword $(wildcard /usr/lib/*/openblas-openmp/pkgconfig))
ifneq ($(BLAS_PC),)
export PKG_CONFIG_PATH := $(BLAS_PC)$(if $(PKG_CONFIG_PATH),:$(PKG_CONFIG_PATH))
BLAS_RPATH := -Wl,-rpath,$(patsubst %/pkgconfig,%,$(BLAS_PC))
endif
# MPI (OpenMPI) for multi-process training when its development files exist.
MPI_PKG := $(shell pkg-config --exists ompi-c && echo ompi-c)
ifneq ($(MPI_PKG),)
PKGS    += $(MPI_PKG)
MPI_DEF := -DVLFT_MPI
endif
CFLAGS_BASE := $(MPI_DEF) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -Wno-unused-parameter -Werror=implicit-function-declaration \
               -fopenmp -MMD -MP $(shell pkg-config --cflags $(PKGS))
# oneDNN (libdnnl-dev) has no pkg-config file: bf16 matmuls where the CPU has them.
LDLIBS  := $(shell pkg-config --libs $(PKGS)) -ldnnl $(BLAS_RPATH) -fopenmp -lm -lpthread
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo 0.1.0)

# `make CUDA=1` adds the CUDA backend (src/kernels/cuda, src/model/llava_cuda.c)
# into build-cuda/; the plain build stays CPU-only and never needs a CUDA toolkit.
CUDA    ?= 0
ifeq ($(CUDA),1)
BUILD   ?= build-cuda
else
BUILD   ?= build
endif
OPT     ?= -O2 -g
SAN     ?=

CFLAGS  := $(CFLAGS_BASE) $(OPT) $(SAN) -DVLFT_VERSION='"0.1.0 ($(VERSION))"'

LIB_SRC  := $(shell find src -name '*.c' ! -name main.c ! -path 'src/kernels/cuda/*' ! -name '*_cuda.c' | sort)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
ifeq ($(CUDA),1)
CUDA_HOME ?= /usr/local/cuda
NVCC     ?= $(CUDA_HOME)/bin/nvcc
# Hopper (H100/H200) machine code plus PTX for newer chips.
NVCC_ARCH ?= -gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_90,code=compute_90
NVCCFLAGS := -O3 -std=c++17 $(NVCC_ARCH) -lineinfo -Xcompiler -Wall -MMD -MP
CFLAGS   += -DVLFT_CUDA -I$(CUDA_HOME)/include
LIB_SRC  += $(sort $(wildcard src/kernels/cuda/*.c) $(shell find src -name '*_cuda.c'))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o) $(patsubst %.cu,$(BUILD)/%.cu.o,$(sort $(wildcard src/kernels/cuda/*.cu)))
LDLIBS   += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcublasLt -lcudart -lstdc++
# Device-only checks (kernel parity, attention), one .c each in tests/cuda.
CUDA_TEST_BINS := $(patsubst tests/cuda/%.c,$(BUILD)/tests/cuda/%,$(sort $(wildcard tests/cuda/*.c)))
endif
TEST_SRC := $(sort $(wildcard tests/unit/*.c))
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
# Small programs the Python tests drive (one .c each in tests/bin).
TEST_BINS := $(patsubst tests/bin/%.c,$(BUILD)/tests/bin/%,$(sort $(wildcard tests/bin/*.c)))
# Each fuzz target linked with a plain main() that replays its seeds and
# regressions (tests/python/test_fuzz_replay.py runs them).
FUZZ_REPLAY := $(patsubst tests/fuzz/fuzz_%.c,$(BUILD)/tests/fuzz/replay_%,$(sort $(wildcard tests/fuzz/fuzz_*.c)))

.PHONY: all debug asan test test-asan fuzz lib-sources lib-cflags lib-ldlibs clean demo cuda-tests

all: $(BUILD)/vlft

$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/tests/cuda/%: $(BUILD)/tests/cuda/%.o $(BUILD)/libvlft.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

cuda-tests: $(BUILD)/vlft $(CUDA_TEST_BINS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The tiny model's tokenizer files are embedded with .incbin.
$(BUILD)/src/text/tiny_tokenizer.o: $(wildcard tests/data/tokenizers/yi_like/*)

$(BUILD)/libvlft.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/vlft: $(BUILD)/src/main.o $(BUILD)/libvlft.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/unit_tests: $(TEST_OBJ) $(BUILD)/libvlft.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS) -lcriterion

$(BUILD)/tests/bin/%: $(BUILD)/tests/bin/%.o $(BUILD)/libvlft.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/fuzz/replay_%: $(BUILD)/tests/fuzz/fuzz_%.o $(BUILD)/tests/fuzz/replay_main.o $(BUILD)/libvlft.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

debug:
	$(MAKE) BUILD=build-debug OPT="-O0 -g3"

asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g" SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	    build-asan/vlft build-asan/unit_tests $(patsubst $(BUILD)/%,build-asan/%,$(TEST_BINS) $(FUZZ_REPLAY))

test: $(BUILD)/vlft $(BUILD)/unit_tests $(TEST_BINS) $(FUZZ_REPLAY)
	tests/run.sh $(BUILD)

test-asan: asan
	tests/run.sh build-asan

FUZZ_SECONDS ?= 60
fuzz:
	tests/fuzz/run.sh $(FUZZ_SECONDS)

# The library's sources for this build's flags, one per line: tests/fuzz/run.sh
# builds its targets from this list so that it cannot drift from the Makefile's.
lib-sources:
	@printf '%s\n' $(LIB_SRC)

# The include and link flags of the CPU build's libraries: the bench/ scripts
# and tests/fuzz/run.sh link build/libvlft.a into programs of their own with
# these, so that a library added here reaches them too.
lib-cflags:
	@echo $(shell pkg-config --cflags $(PKGS))

lib-ldlibs:
	@echo $(LDLIBS)

demo: $(BUILD)/vlft
	examples/demo.sh

clean:
	rm -rf build build-debug build-asan build-fuzz build-cuda

-include $(LIB_OBJ:.o=.d) $(CUDA_TEST_BINS:=.d) $(TEST_OBJ:.o=.d) $(BUILD)/src/main.d $(TEST_BINS:=.d) $(FUZZ_REPLAY:$(BUILD)/tests/fuzz/replay_%=$(BUILD)/tests/fuzz/fuzz_%.d)
