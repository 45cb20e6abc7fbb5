# peft - fine-tune pretrained transformers inside PostgreSQL.
#
# Two shared libraries:
#   peft.so         the SQL layer and background worker (PGXS); links no
#                   BLAS, no CUDA, starts no thread: safe to preload.
#   peft_engine.so  the computing core (src/engine, kernels/), OpenBLAS and
#                   optionally CUDA; dlopen'ed on first use by the process
#                   that computes.
#
# Variables:  PEFT_CUDA=auto|0|1   CUDA_HOME=/usr/local/cuda   PEFT_ASAN=1

EXTENSION    = peft
EXTVERSION   = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" peft.control)
# The release number is written in peft.control and src/engine/api/version.h: they must agree.
ifneq ($(EXTVERSION),$(shell sed -n 's/^\#define PEFT_VERSION "\(.*\)"/\1/p' src/engine/api/version.h))
$(error peft.control's default_version $(EXTVERSION) differs from src/engine/api/version.h)
endif
# The engine's sources live in folders by layer (src/engine/api, formats,
# tokenizers, models, ops, backends, methods, training): every folder is on
# the include path, so files include each other's headers by name.
ENGINE_DIRS  = $(sort $(patsubst %/,%,$(dir $(wildcard src/engine/*/*.c src/engine/*/*.h))))
ENGINE_INC   = $(addprefix -I,$(ENGINE_DIRS))
ENGINE_HDRS  = $(wildcard src/engine/*.h src/engine/*/*.h)

MODULE_big   = peft
OBJS         = $(patsubst %.c,%.o,$(wildcard src/*.c))
DATA         = $(wildcard sql/peft--*.sql)
REGRESS      = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/[0-9]*.sql)))
REGRESS_OPTS = --inputdir=. --load-extension=$(EXTENSION) --encoding=UTF8
PG_CPPFLAGS  = -Isrc $(ENGINE_INC) -Wall -Wextra -Wno-unused-parameter \
               -Wno-missing-field-initializers -Wno-sign-compare
EXTRA_CLEAN  = peft_engine.so peft_engine_cuda.so peft-engine build build-asan results regression.diffs \
               regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
else
# No PostgreSQL (a GPU check machine): only the engine, its runner and tests.
$(info peft: pg_config not found: building the engine only)
all:
clean:
	rm -rf $(EXTRA_CLEAN)
endif

# PGXS tracks no header dependencies: rebuild the SQL layer when its
# headers or the engine interface change.
$(OBJS): $(wildcard src/*.h) src/engine/api/engine_api.h src/engine/api/status.h

# ---- engine library -------------------------------------------------------

CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(CUDA_HOME)/bin/nvcc
PEFT_CUDA ?= auto
ifeq ($(PEFT_CUDA),auto)
  ifneq ($(wildcard $(NVCC)),)
    ifneq ($(wildcard $(CUDA_HOME)/lib64/libcublas.so*)$(wildcard $(CUDA_HOME)/targets/*/lib/libcublas.so*),)
      PEFT_CUDA := 1
    endif
  endif
endif
ifneq ($(PEFT_CUDA),1)
  PEFT_CUDA := 0
endif

ENGINE_PKGS    = openblas libcjson libutf8proc libpcre2-8
# -fvisibility=hidden: the engine's library exports its API table and what the
# CUDA library needs from it (PEFT_EXPORT), nothing else.
ENGINE_CFLAGS  = -std=gnu11 -O3 -fPIC -g -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter \
                 -Wno-sign-compare -pthread $(ENGINE_INC) -Ikernels \
                 $(shell pkg-config --cflags $(ENGINE_PKGS))
ENGINE_LIBS    = $(shell pkg-config --libs $(ENGINE_PKGS)) -lm -pthread
ENGINE_SRCS    = $(sort $(wildcard src/engine/*/*.c))
ENGINE_OBJS    = $(patsubst src/engine/%.c,$(B)/engine/%.o,$(ENGINE_SRCS))
# The same sources in double precision, for gradient checks only.
# (The float-only files are left out: the API and the decoder's inference,
# which runs on quant.h's float products.)
ENGINE_FLOAT_ONLY  = $(filter %/engine_api.c %/engine_session.c %/engine_decoder.c %/decoder_training.c %/decoder.c \
                     %/generate.c %/generate_stream.c,$(ENGINE_SRCS))
ENGINE_DOUBLE_OBJS = $(patsubst src/engine/%.c,$(B)/double/%.o,\
                     $(filter-out $(ENGINE_FLOAT_ONLY),$(ENGINE_SRCS)))

# Objects live in build/, or build-asan/ for the sanitized unit tests.
B = build
SANITIZE =
ifeq ($(PEFT_ASAN),1)
  B = build-asan
  SANITIZE       = -fsanitize=address,undefined
  ENGINE_CFLAGS += -O1 $(SANITIZE) -fno-omit-frame-pointer
  ENGINE_LIBS   += $(SANITIZE)
endif

ifeq ($(PEFT_CUDA),1)
  CUDA_SRCS     = $(sort $(wildcard kernels/*.cu))
  CUDA_OBJS     = $(patsubst kernels/%.cu,$(B)/cuda/%.o,$(CUDA_SRCS))
  NVCC_FLAGS    = -O3 -std=c++17 -Xcompiler -fPIC -Xcompiler -fvisibility=hidden $(ENGINE_INC) -Ikernels \
                  -gencode arch=compute_80,code=sm_80 \
                  -gencode arch=compute_90,code=sm_90 \
                  -gencode arch=compute_90,code=compute_90
  ENGINE_CFLAGS += -DPEFT_WITH_CUDA -I$(CUDA_HOME)/include
  CUDA_LIBS      = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 \
                   -Wl,--no-as-needed -lcublas -lcudart -Wl,--as-needed -lstdc++
  # the CUDA backend and kernels are their own library, loaded on first use
  CUDA_LIB       = peft_engine_cuda.so
  BACKENDS      = cpu (OpenBLAS) + cuda (cuBLAS, sm_80/sm_90, in peft_engine_cuda.so)
else
  CUDA_OBJS     =
  CUDA_LIBS     =
  CUDA_LIB      =
  BACKENDS      = cpu (OpenBLAS)
endif
# peft_engine.so holds everything but the CUDA backend
ENGINE_LIB_OBJS = $(filter-out $(B)/engine/backends/backend_cuda.o,$(ENGINE_OBJS))

$(B)/engine/%.o: src/engine/%.c $(ENGINE_HDRS) | $(B)/engine
	@mkdir -p $(@D)
	$(CC) $(ENGINE_CFLAGS) -c $< -o $@

$(B)/double/%.o: src/engine/%.c $(ENGINE_HDRS) | $(B)/double
	@mkdir -p $(@D)
	$(CC) $(ENGINE_CFLAGS) -UPEFT_WITH_CUDA -DPEFT_DOUBLE -c $< -o $@

$(B)/cuda/%.o: kernels/%.cu $(wildcard kernels/*.h kernels/*.cuh) $(ENGINE_HDRS) | $(B)/cuda
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

$(B)/engine $(B)/double $(B)/cuda $(B)/unit $(B)/test $(B)/test-double:
	mkdir -p $@

# Rebuild everything when the configuration changes.
$(B)/config.stamp: FORCE | $(B)/engine
	@echo "PEFT_CUDA=$(PEFT_CUDA) PEFT_ASAN=$(PEFT_ASAN)" > $@.tmp
	@cmp -s $@.tmp $@ || { mv $@.tmp $@; rm -f $(B)/engine/*.o $(B)/cuda/*.o $(B)/double/*.o \
		$(B)/test/*.o $(B)/test-double/*.o; }
	@rm -f $@.tmp
FORCE:

$(ENGINE_OBJS) $(ENGINE_DOUBLE_OBJS) $(CUDA_OBJS): $(B)/config.stamp

peft_engine.so: $(ENGINE_LIB_OBJS)
	$(CC) -shared -Wl,--no-undefined -o $@ $(ENGINE_LIB_OBJS) $(ENGINE_LIBS) -ldl
	@echo "peft: engine backends: $(BACKENDS)"

# The CUDA backend: found by peft_engine.so in its own folder ($ORIGIN), and
# resolving the engine's symbols from it.
peft_engine_cuda.so: $(B)/engine/backends/backend_cuda.o $(CUDA_OBJS) peft_engine.so
	$(CC) -shared -Wl,--no-undefined -o $@ $(B)/engine/backends/backend_cuda.o $(CUDA_OBJS) \
		-L. -l:peft_engine.so -Wl,-rpath,'$$ORIGIN' $(CUDA_LIBS) $(ENGINE_LIBS)

# The command-line runner uses the engine only through its API table
# (engine_api.h), from peft_engine.so found beside it (rpath $ORIGIN), and
# the CUDA library that peft_engine.so loads from its own folder.
CLI_CFLAGS = -std=gnu11 -O2 -g -Wall -Wextra -Wno-unused-parameter $(ENGINE_INC) \
             $(shell pkg-config --cflags libcjson) $(SANITIZE)
CLI_SRCS   = $(sort $(wildcard src/cli/*.c))
peft-engine: $(CLI_SRCS) $(wildcard src/cli/*.h) src/engine/api/engine_api.h src/engine/api/status.h src/engine/ops/blas_kernels.h peft_engine.so $(CUDA_LIB)
	$(CC) $(CLI_CFLAGS) -o $@ $(CLI_SRCS) -L. -l:peft_engine.so -Wl,-rpath,'$$ORIGIN' \
		$(shell pkg-config --libs libcjson) $(SANITIZE)

ifneq ($(wildcard src/cli/peft_engine_main.c),)
all: peft-engine
endif
all: peft_engine.so $(CUDA_LIB)
$(shlib): $(B)/config.stamp

install: install-engine
install-engine: peft_engine.so $(CUDA_LIB)
	$(INSTALL_SHLIB) peft_engine.so '$(DESTDIR)$(pkglibdir)/peft_engine.so'
	$(if $(CUDA_LIB),$(INSTALL_SHLIB) $(CUDA_LIB) '$(DESTDIR)$(pkglibdir)/$(CUDA_LIB)')
uninstall: uninstall-engine
uninstall-engine:
	rm -f '$(DESTDIR)$(pkglibdir)/peft_engine.so' '$(DESTDIR)$(pkglibdir)/peft_engine_cuda.so'

# ---- engine unit tests (cmocka) -------------------------------------------
# test/unit/test_*.c link the float engine; test/unit/gradcheck_*.c the
# double-precision build of the same sources.  Both also link the test-only
# code, which peft_engine.so never contains:
#   test/unit/ops_reference.c  padded-batch reference ops the tests compare
#                              with (float and double builds);
#   test/unit/X_hooks.c        engine module X plus its test-only entry
#                              points: it includes src/engine/X.c and
#                              replaces X.o.

UNIT_SRCS   = $(sort $(wildcard test/unit/test_*.c))
GRAD_SRCS   = $(sort $(wildcard test/unit/gradcheck_*.c))
UNIT_BINS   = $(patsubst test/unit/%.c,$(B)/unit/%,$(UNIT_SRCS) $(GRAD_SRCS))
UNIT_CFLAGS = $(ENGINE_CFLAGS) -Itest/unit -DPEFT_SOURCE_DIR='"$(CURDIR)"'
TEST_HEADERS = $(ENGINE_HDRS) $(wildcard test/unit/*.h)

TEST_REF_SRCS  = test/unit/ops_reference.c
TEST_HOOK_SRCS = $(sort $(wildcard test/unit/*_hooks.c))
TEST_ONLY_OBJS   = $(patsubst test/unit/%.c,$(B)/test/%.o,$(TEST_HOOK_SRCS) $(TEST_REF_SRCS))
TEST_DOUBLE_ONLY = $(patsubst test/unit/%.c,$(B)/test-double/%.o,$(TEST_REF_SRCS))
# What the tests link: the engine, hooked modules swapped for their hooks.
TEST_OBJS        = $(filter-out $(foreach h,$(patsubst test/unit/%_hooks.c,%,$(TEST_HOOK_SRCS)),%/$(h).o),$(ENGINE_OBJS)) \
                   $(TEST_ONLY_OBJS)
TEST_DOUBLE_OBJS = $(ENGINE_DOUBLE_OBJS) $(TEST_DOUBLE_ONLY)

$(TEST_ONLY_OBJS) $(TEST_DOUBLE_ONLY): $(B)/config.stamp

$(B)/test/%_hooks.o: test/unit/%_hooks.c $(ENGINE_SRCS) $(TEST_HEADERS) | $(B)/test
	$(CC) $(UNIT_CFLAGS) -c $< -o $@

$(B)/test/ops_reference.o: test/unit/ops_reference.c $(TEST_HEADERS) | $(B)/test
	$(CC) $(UNIT_CFLAGS) -c $< -o $@

$(B)/test-double/ops_reference.o: test/unit/ops_reference.c $(TEST_HEADERS) | $(B)/test-double
	$(CC) $(UNIT_CFLAGS) -UPEFT_WITH_CUDA -DPEFT_DOUBLE -c $< -o $@

$(B)/unit/test_%: test/unit/test_%.c $(TEST_OBJS) $(CUDA_OBJS) $(wildcard test/unit/*.h) | $(B)/unit
	$(CC) $(UNIT_CFLAGS) -o $@ $< $(TEST_OBJS) $(CUDA_OBJS) $(ENGINE_LIBS) $(CUDA_LIBS) -ldl -lcmocka

$(B)/unit/gradcheck_%: test/unit/gradcheck_%.c $(TEST_DOUBLE_OBJS) $(wildcard test/unit/*.h) | $(B)/unit
	$(CC) $(UNIT_CFLAGS) -UPEFT_WITH_CUDA -DPEFT_DOUBLE -o $@ $< $(TEST_DOUBLE_OBJS) $(ENGINE_LIBS) -ldl -lcmocka

unit: $(UNIT_BINS)

# ---- GPU parity tests (CUDA builds only; they skip without a device) ------

# test/gpu/bench_gpu_*.c are GPU benchmarks that check.sh runs after its
# own (build/gpu-bench/, apart so that the test runners do not take them
# for tests).
GPU_SRCS = $(sort $(wildcard test/gpu/test_gpu_*.c))
GPU_BENCH_SRCS = $(sort $(wildcard test/gpu/bench_gpu_*.c))
ifeq ($(PEFT_CUDA),1)
GPU_BINS = $(patsubst test/gpu/%.c,$(B)/gpu/%,$(GPU_SRCS))
GPU_BENCH_BINS = $(patsubst test/gpu/%.c,$(B)/gpu-bench/%,$(GPU_BENCH_SRCS))
else
GPU_BINS =
GPU_BENCH_BINS =
endif

$(B)/gpu $(B)/gpu-bench:
	mkdir -p $@

$(B)/gpu/test_gpu_%: test/gpu/test_gpu_%.c $(TEST_OBJS) $(CUDA_OBJS) | $(B)/gpu
	$(CC) $(UNIT_CFLAGS) -Itest/gpu -o $@ $< $(TEST_OBJS) $(CUDA_OBJS) $(ENGINE_LIBS) $(CUDA_LIBS) -ldl -lcmocka

$(B)/gpu-bench/bench_gpu_%: test/gpu/bench_gpu_%.c $(TEST_OBJS) $(CUDA_OBJS) | $(B)/gpu-bench
	$(CC) $(UNIT_CFLAGS) -Itest/gpu -o $@ $< $(TEST_OBJS) $(CUDA_OBJS) $(ENGINE_LIBS) $(CUDA_LIBS) -ldl

gpu-tests: $(GPU_BINS) $(GPU_BENCH_BINS)

engine: peft_engine.so

.PHONY: unit gpu-tests engine install-engine uninstall-engine FORCE
