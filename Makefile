# tokengate: one non-recursive Makefile. `make V=1` shows the commands.
#
#   make            build build/tokengate and the test/bench tools
#   make test       unit + end-to-end tests (plain build)
#   make asan       the same tests with the agent built under ASan + UBSan
#   make check      what CI runs: deps, test and asan in one summary, fuzz
#   make fuzz       libFuzzer on the frame decoder, the body scanner, the log-line parser, the config file reader and the usage journal decoder (FUZZ_SECONDS each, default 60)
#   make bench      the side-by-side benchmarks (see bench/)
#   make soak       10 minutes under load: memory and fds flat (SOAK_SECONDS; not in check/CI)
#   make valgrind   e2e suites with the agent under valgrind, no error, no leak (40 s; in check)
#   make install    PREFIX=/usr/local

CC      ?= cc
PREFIX  ?= /usr/local
BUILD   ?= build
FUZZ_SECONDS ?= 60
SOAK_SECONDS ?= 600

PKGS    := sqlite3 openssl libcjson
WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wundef -Wno-unused-parameter
CFLAGS  ?= -O2 -g
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) -MMD -MP -Ispoa -Ibench $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  := -lev -lm -lpthread $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -lsqlite3 -lcrypto -lcjson)

ifeq ($(V),1)
Q :=
else
Q := @
endif

SPOA_SRC := $(filter-out spoa/main.c,$(wildcard spoa/*.c))
SPOA_OBJ := $(SPOA_SRC:%.c=$(BUILD)/%.o) $(BUILD)/schema_sql.o
WIRE_OBJ := $(BUILD)/bench/spopwire.o

BINS := $(BUILD)/tokengate $(BUILD)/test_spop $(BUILD)/test_daytime $(BUILD)/test_engine $(BUILD)/test_breaker $(BUILD)/test_batch $(BUILD)/test_journal $(BUILD)/test_logsock $(BUILD)/test_strmap $(BUILD)/test_usermap $(BUILD)/test_ledger $(BUILD)/test_fallback $(BUILD)/test_redact $(BUILD)/test_config $(BUILD)/test_tokenfile $(BUILD)/test_ratelog $(BUILD)/test_store $(BUILD)/test_politevfs $(BUILD)/spopload $(BUILD)/spopraw $(BUILD)/wire_selftest $(BUILD)/writerbench $(BUILD)/fuzz_replay $(BUILD)/fuzz_body_replay $(BUILD)/fuzz_logline_replay $(BUILD)/fuzz_config_replay $(BUILD)/fuzz_journal_replay

.PHONY: all test asan check fuzz bench soak valgrind install clean deps
all: $(BINS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -c -o $@ $<

# The SQL migrations are compiled into the binary.
$(BUILD)/schema_sql.c: schema/embed.sh $(wildcard schema/[0-9][0-9][0-9]_*.sql)
	@mkdir -p $(dir $@)
	$(Q)sh schema/embed.sh > $@.tmp && mv $@.tmp $@

$(BUILD)/schema_sql.o: $(BUILD)/schema_sql.c
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/tokengate: $(BUILD)/spoa/main.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/test_spop: $(BUILD)/tests/unit/test_spop.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_daytime: $(BUILD)/tests/unit/test_daytime.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_engine: $(BUILD)/tests/unit/test_engine.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_breaker: $(BUILD)/tests/unit/test_breaker.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_batch: $(BUILD)/tests/unit/test_batch.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_journal: $(BUILD)/tests/unit/test_journal.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_logsock: $(BUILD)/tests/unit/test_logsock.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_strmap: $(BUILD)/tests/unit/test_strmap.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

# calloc and realloc are wrapped so that the test can make one fail.
$(BUILD)/test_usermap: $(BUILD)/tests/unit/test_usermap.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -Wl,--wrap=calloc,--wrap=realloc -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_ledger: $(BUILD)/tests/unit/test_ledger.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_redact: $(BUILD)/tests/unit/test_redact.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_store: $(BUILD)/tests/unit/test_store.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_politevfs: $(BUILD)/tests/unit/test_politevfs.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_fallback: $(BUILD)/tests/unit/test_fallback.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_config: $(BUILD)/tests/unit/test_config.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_tokenfile: $(BUILD)/tests/unit/test_tokenfile.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/test_ratelog: $(BUILD)/tests/unit/test_ratelog.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/spopload: $(BUILD)/bench/spopload.o $(WIRE_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ -lm -lpthread

$(BUILD)/spopraw: $(BUILD)/tests/tools/spopraw.o $(WIRE_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^

$(BUILD)/writerbench: $(BUILD)/bench/writerbench.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/wire_selftest: $(BUILD)/bench/wire_selftest.o $(WIRE_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^

# The fuzz target's corpus, replayed as an ordinary test (no clang needed).
$(BUILD)/fuzz_replay: $(BUILD)/tests/fuzz/fuzz_frame.o $(BUILD)/tests/fuzz/replay_main.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/fuzz_body_replay: $(BUILD)/tests/fuzz/fuzz_body.o $(BUILD)/tests/fuzz/replay_main.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/fuzz_logline_replay: $(BUILD)/tests/fuzz/fuzz_logline.o $(BUILD)/tests/fuzz/replay_main.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/fuzz_config_replay: $(BUILD)/tests/fuzz/fuzz_config.o $(BUILD)/tests/fuzz/replay_main.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/fuzz_journal_replay: $(BUILD)/tests/fuzz/fuzz_journal.o $(BUILD)/tests/fuzz/replay_main.o $(SPOA_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

# libFuzzer build: clang only. UBSan recovers by default: a "runtime error"
# would be printed and the run would still end with status 0, so every check
# is made fatal (libFuzzer then saves the input as a crash). The Makefile is a
# prerequisite so that a flag change here rebuilds the fuzzers.
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -Ispoa -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
$(BUILD)/fuzz_frame: tests/fuzz/fuzz_frame.c $(SPOA_SRC) $(BUILD)/schema_sql.c Makefile
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZ    $@")
	$(Q)clang $(FUZZ_CFLAGS) -o $@ $(filter %.c,$^) $(LDLIBS)

$(BUILD)/fuzz_logline: tests/fuzz/fuzz_logline.c $(SPOA_SRC) $(BUILD)/schema_sql.c Makefile
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZ    $@")
	$(Q)clang $(FUZZ_CFLAGS) -o $@ $(filter %.c,$^) $(LDLIBS)

$(BUILD)/fuzz_config: tests/fuzz/fuzz_config.c $(SPOA_SRC) $(BUILD)/schema_sql.c Makefile
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZ    $@")
	$(Q)clang $(FUZZ_CFLAGS) -o $@ $(filter %.c,$^) $(LDLIBS)

$(BUILD)/fuzz_body: tests/fuzz/fuzz_body.c $(SPOA_SRC) $(BUILD)/schema_sql.c Makefile
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZ    $@")
	$(Q)clang $(FUZZ_CFLAGS) -o $@ $(filter %.c,$^) $(LDLIBS)

$(BUILD)/fuzz_journal: tests/fuzz/fuzz_journal.c $(SPOA_SRC) $(BUILD)/schema_sql.c Makefile
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZ    $@")
	$(Q)clang $(FUZZ_CFLAGS) -o $@ $(filter %.c,$^) $(LDLIBS)

# The ASan + UBSan build (build-asan) of `make asan` and `make check`: every
# UBSan check fatal, as in the fuzzers, so that a report fails the test.
SAN_CFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all

test: all
	$(Q)TG_BUILD=$(BUILD) tests/run.sh

asan:
	$(Q)$(MAKE) --no-print-directory BUILD=build-asan CC=clang \
		CFLAGS="$(SAN_CFLAGS)" all
	$(Q)TG_BUILD=build-asan tests/run.sh

# halt_on_error also stops a fuzzer built without -fno-sanitize-recover (an
# old binary, other CFLAGS) at its first UBSan report. New inputs go to
# $(BUILD)/fuzz-corpus*; to have the replay tests keep what a run found, merge
# the ones that add coverage into the committed corpus, e.g.
#   $(BUILD)/fuzz_frame -merge=1 -max_len=70000 tests/fuzz/corpus $(BUILD)/fuzz-corpus
fuzz: export UBSAN_OPTIONS := halt_on_error=1:print_stacktrace=1
fuzz: $(BUILD)/fuzz_frame $(BUILD)/fuzz_body $(BUILD)/fuzz_logline $(BUILD)/fuzz_config $(BUILD)/fuzz_journal
	$(Q)mkdir -p $(BUILD)/fuzz-corpus $(BUILD)/fuzz-corpus-body $(BUILD)/fuzz-corpus-logline $(BUILD)/fuzz-corpus-config $(BUILD)/fuzz-corpus-journal
	$(Q)$(BUILD)/fuzz_frame -max_total_time=$(FUZZ_SECONDS) -max_len=70000 -artifact_prefix=$(BUILD)/ \
		-print_final_stats=1 $(BUILD)/fuzz-corpus tests/fuzz/corpus
	$(Q)$(BUILD)/fuzz_body -max_total_time=$(FUZZ_SECONDS) -max_len=8192 \
		-print_final_stats=1 -artifact_prefix=$(BUILD)/ $(BUILD)/fuzz-corpus-body tests/fuzz/corpus-body
	$(Q)$(BUILD)/fuzz_logline -max_total_time=$(FUZZ_SECONDS) -max_len=8192 \
		-print_final_stats=1 -artifact_prefix=$(BUILD)/ $(BUILD)/fuzz-corpus-logline tests/fuzz/corpus-logline
	$(Q)$(BUILD)/fuzz_config -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
		-print_final_stats=1 -artifact_prefix=$(BUILD)/ $(BUILD)/fuzz-corpus-config tests/fuzz/corpus-config
	$(Q)$(BUILD)/fuzz_journal -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
		-print_final_stats=1 -artifact_prefix=$(BUILD)/ $(BUILD)/fuzz-corpus-journal tests/fuzz/corpus-journal

deps:
	$(Q)ops/install-deps.sh

# CI and the README's test command: everything, one summary line at the end.
check: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)$(MAKE) --no-print-directory BUILD=build-asan CC=clang \
		CFLAGS="$(SAN_CFLAGS)" all $(if $(filter 0,$(FUZZ_SECONDS)),,build-asan/fuzz_frame build-asan/fuzz_body build-asan/fuzz_logline build-asan/fuzz_config build-asan/fuzz_journal)
	$(Q)TG_BUILD=build TG_ASAN_BUILD=build-asan TG_FUZZ_SECONDS=$(FUZZ_SECONDS) TG_VALGRIND=1 tests/run.sh

bench: all
	$(Q)bench/run

valgrind: all
	$(Q)TG_BUILD=$(BUILD) tests/valgrind.sh

soak: all
	$(Q)SOAK_SECONDS=$(SOAK_SECONDS) BUILD=$(BUILD) bench/soak.sh

install: $(BUILD)/tokengate
	install -D -m 0755 $(BUILD)/tokengate $(DESTDIR)$(PREFIX)/bin/tokengate
	install -d $(DESTDIR)$(PREFIX)/share/tokengate
	cp -r haproxy-conf schema $(DESTDIR)$(PREFIX)/share/tokengate/

clean:
	rm -rf build build-asan

-include $(shell find build build-asan -name '*.d' 2>/dev/null)
