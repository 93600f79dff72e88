/* main: argv -> config -> listen -> signals -> loop. Nothing else. */
#include <ev.h>
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin.h"
#include "config.h"
#include "conn.h"
#include "crypto.h"
#include "daytime.h"
#include "engine.h"
#include "http.h"
#include "listener.h"
#include "tls.h"
#include "tokenfile.h"
#include "logsock.h"
#include "priv.h"
#include "log.h"
#include "metrics.h"
#include "state.h"
#include "store.h"

#define TOKENGATE_VERSION "0.1.0"
#define DRAIN_TIMEOUT_S 5.0
#define FINAL_WRITE_WAIT_MS 5000
#define TICK_S 1.0

static struct {
	int argc;
	char **argv;
	const char *config_file;
	struct config cfg;
	struct conn_env env;
	struct listener *listener;
	struct store *store;
	struct http_server *admin;
	struct logsock *logsock;
	struct priv priv;
	struct metrics_sources sources;
	uint64_t db_reopens; /* store_stats.reopens already acted on */
	int stopping;
	ev_signal sigterm, sigint, sighup;
	ev_timer drain_timer, flush_timer, tick_timer;
} g;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: tokengate [--config FILE] [--listen ADDR] [--db PATH] [--KEY VALUE ...]\n"
		"       tokengate --check [--config FILE] [...]\n"
		"       tokengate key create --user U [--tier T] [--label L] [--expires-days N]\n"
		"       tokengate key revoke (--prefix P | --user U)\n"
		"       tokengate limit set (--user U | --tier T) [--tokens N|none] [--requests N|none] [--cost USD|none]\n"
		"       tokengate usage --user U [--day YYYY-MM-DD]\n"
		"       tokengate --help | --version\n\n"
		"A HAProxy SPOE agent enforcing per-user daily LLM token budgets.\n\n"
		"  --config FILE          read settings from FILE (key = value lines)\n"
		"  --check                validate the configuration and exit (0 if valid)\n"
		"  --help, --version\n"
		"The key, limit and usage commands work on the database given by --db or\n"
		"--config, also while the agent runs (it applies changes within db_poll_ms).\n\n"
		"Settings (in the config file as `key = value`, here as --key VALUE):\n");
	config_print_help(f);
}

/*
 * Builds a configuration from defaults, the file and argv. mode_check and
 * mode_help report the one-shot flags. Returns 0, or -1 with err set.
 */
static int build_config(struct config *c, int argc, char **argv, const char **config_file,
			int *mode_check, char *err, size_t errsz)
{
	int first = 1, words;

	/* Subcommands: skip their words; their own options are theirs. */
	if (admin_is_command(argc, argv, &words))
		first = 1 + words;
	*config_file = NULL;
	/* The file comes first whatever its place on the line, so that the
	 * command line always wins over it. */
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			*config_file = argv[i + 1];
		else if (strncmp(argv[i], "--config=", 9) == 0)
			*config_file = argv[i] + 9;
	}
	config_defaults(c);
	if (*config_file && config_load_file(c, *config_file, err, errsz) == -1)
		return -1;
	for (int i = first; i < argc; i++) {
		const char *arg = argv[i], *key, *value;
		char name[64];
		const char *eq;

		if (strcmp(arg, "--check") == 0) {
			*mode_check = 1;
			continue;
		}
		if (strcmp(arg, "--config") == 0) {
			i++;
			continue;
		}
		if (strncmp(arg, "--config=", 9) == 0)
			continue;
		if (strncmp(arg, "--", 2) != 0) {
			snprintf(err, errsz, "unexpected argument \"%s\"", arg);
			return -1;
		}
		key = arg + 2;
		if (first > 1) {
			char optname[64];

			snprintf(optname, sizeof(optname), "%.*s", (int)strcspn(key, "="), key);
			if (admin_is_option(optname)) {
				i += strchr(key, '=') ? 0 : 1;
				continue;
			}
		}
		eq = strchr(key, '=');
		if (eq) {
			if ((size_t)(eq - key) >= sizeof(name)) {
				snprintf(err, errsz, "%.60s: unknown option", arg);
				return -1;
			}
			memcpy(name, key, (size_t)(eq - key));
			name[eq - key] = '\0';
			key = name;
			value = eq + 1;
		} else {
			if (!config_has_key(key)) {
				snprintf(err, errsz, "%s: unknown option (see --help)", arg);
				return -1;
			}
			if (i + 1 >= argc) {
				snprintf(err, errsz, "%s: missing value", arg);
				return -1;
			}
			value = argv[++i];
		}
		if (config_set(c, key, value, err, errsz) == -1)
			return -1;
	}
	return config_validate(c, err, errsz);
}

/* Writes text to path through a temporary file and a rename, so that a
 * reader polling for the file never sees it half-written. */
static int write_file_atomic(const char *path, const char *text)
{
	char tmp[CONFIG_STR_MAX + 16];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	if (!f)
		return -1;
	if (fputs(text, f) == EOF || fclose(f) == EOF)
		return -1;
	return rename(tmp, path);
}

/* The admin listener's token: admin_token, or the first line of
 * admin_token_file, which keeps it out of ps and of the config file. Read
 * once, at start (admin_* wait for a restart). */
static int admin_token(const struct config *c, char *out, size_t outsz, char *err, size_t errsz)
{
	if (!c->admin_token_file[0]) {
		snprintf(out, outsz, "%s", c->admin_token);
		return 0;
	}
	return tokenfile_read("admin_token_file", c->admin_token_file, out, outsz, err, errsz);
}

/* With no --db: tokengate.db next to the config file, or here. */
static void resolve_paths(struct config *c, const char *config_file)
{
	if (!c->db[0]) {
		const char *slash = config_file ? strrchr(config_file, '/') : NULL;

		if (slash)
			snprintf(c->db, sizeof(c->db), "%.*s/tokengate.db", (int)(slash - config_file), config_file);
		else
			snprintf(c->db, sizeof(c->db), "tokengate.db");
	}
	if (!c->secret_file[0])
		snprintf(c->secret_file, sizeof(c->secret_file), "%.*s.secret", (int)sizeof(c->secret_file) - 8, c->db);
}

/* Opens the secret and the database and loads what decisions need. */
static struct engine *open_state(struct config *c, int default_secret, struct store **store, char *err,
				 size_t errsz)
{
	struct policy *p;
	struct engine *e;
	struct ledger *l;

	if (crypto_load_secret(c->secret_file, default_secret, err, errsz) == -1)
		return NULL;
	*store = store_open(c->db, err, errsz);
	if (!*store)
		return NULL;
	p = store_load_policy(*store, err, errsz);
	if (!p)
		return NULL;
	e = engine_new(c, p, ev_time());
	if (!e) {
		snprintf(err, errsz, "out of memory");
		policy_free(p);
		return NULL;
	}
	l = engine_ledger(e);
	if (store_load_usage(*store, ledger_day_str(l, ledger_today(l)), l, err, errsz) == -1) {
		engine_free(e);
		return NULL;
	}
	return e;
}

static void on_policy(struct policy *p, void *arg)
{
	(void)arg;
	store_dispose_policy(g.store, engine_set_policy(g.env.engine, p, ev_now(g.env.loop)));
	LOG_INFO("rules reloaded from the database");
}

static void flush_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct batch *b;

	(void)revents;
	/* The writer has not taken the last batch yet: let changes pile up
	 * in the ledger, where a user's many changes are one dirty entry. */
	engine_recycle(g.env.engine, store_recycled(g.store));
	if (store_backlog(g.store) == 0 && (b = engine_take_batch(g.env.engine, ev_now(loop), false)))
		store_submit(g.store, b);
	{
		struct store_stats st;

		store_get_stats(g.store, &st);
		engine_set_store_pending(g.env.engine, st.pending_log_rows);
		engine_set_fold_cpu(g.env.engine, st.last_fold_cpu_s);
		/* The database was opened again: what its file system had not
		 * yet written when it failed is gone (synchronous=NORMAL does
		 * not sync each commit), so every counter goes out again. */
		if (st.reopens != g.db_reopens) {
			g.db_reopens = st.reopens;
			LOG_INFO("db: opened again; writing the counters of all %zu user-days held in memory again",
				 engine_rewrite_usage(g.env.engine));
		}
	}
	w->repeat = (double)engine_policy(g.env.engine)->flush_interval_ms / 1000.0;
	ev_timer_again(loop, w);
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)w;
	(void)revents;
	engine_tick(g.env.engine, ev_now(loop));
	conn_refusal_log_tick(&g.env);
}

static void admin_cb(const char *path, struct http_reply *out, void *arg)
{
	char why[256];

	(void)arg;
	if (!strcmp(path, "/metrics")) {
		out->body = metrics_render(&g.sources, &out->len);
		out->status = out->body ? 200 : 503;
		out->content_type = "text/plain; version=0.0.4; charset=utf-8";
	} else if (!strcmp(path, "/healthz")) {
		out->status = metrics_healthy(&g.sources, why, sizeof(why)) ? 200 : 503;
		out->content_type = "text/plain";
		strcat(why, "\n");
		out->body = strdup(why);
		out->len = out->body ? strlen(out->body) : 0;
	} else if (!strcmp(path, "/state")) {
		out->body = state_json(&g.sources, &out->len);
		out->status = out->body ? 200 : 503;
		out->content_type = "application/json";
	}
}

/* One of HAProxy's log lines: how a request ended. */
enum { LL_ID, LL_BE, LL_TSC, LL_OUT, LL_OUTH, LL_ST, LL_PST, LL_PT, LL_CT, LL_SM, LL_RA, LL_COUNT };
static const char *const log_keys[LL_COUNT] = {
	[LL_ID] = "id", [LL_BE] = "be", [LL_TSC] = "tsc", [LL_OUT] = "out", [LL_OUTH] = "outh", [LL_ST] = "st",
	[LL_PST] = "pst", [LL_PT] = "pt", [LL_CT] = "ct", [LL_SM] = "sm", [LL_RA] = "ra",
};

static void log_line_cb(const char *line, size_t len, void *arg)
{
	struct logsock_val v[LL_COUNT];
	struct engine_end end = {0};
	char backend[64], state[8];
	static unsigned char output[8192];
	long n;

	(void)arg;
	logsock_fields(line, len, log_keys, LL_COUNT, v);
	if (v[LL_ID].len <= 0 || v[LL_TSC].len <= 0)
		return;
	snprintf(backend, sizeof(backend), "%.*s", v[LL_BE].len > 0 ? (int)v[LL_BE].len : 0,
		 v[LL_BE].len > 0 ? v[LL_BE].ptr : "");
	snprintf(state, sizeof(state), "%.*s", (int)v[LL_TSC].len, v[LL_TSC].ptr);
	end.uid = v[LL_ID].ptr;
	end.uid_len = (size_t)v[LL_ID].len;
	end.backend = backend;
	end.tsc = state;
	end.status = (int)logsock_val_int(v[LL_ST], -1);
	end.provider_status = (int)logsock_val_int(v[LL_PST], -1);
	end.prompt_tokens = logsock_val_int(v[LL_PT], -1);
	end.completion_tokens = logsock_val_int(v[LL_CT], -1);
	end.streamed = (int)logsock_val_int(v[LL_SM], -1);
	end.retry_after = logsock_val_int(v[LL_RA], 0);
	if (v[LL_OUT].len > 1 &&
	    (n = logsock_base64(v[LL_OUT].ptr, (size_t)v[LL_OUT].len, output, sizeof(output))) > 0) {
		end.output.ptr = output;
		end.output.len = (size_t)n;
	} else if (v[LL_OUTH].len == 64) {
		/* Hashed by HAProxy already ("hash" routes). */
		end.output.ptr = (const uint8_t *)v[LL_OUTH].ptr;
		end.output.len = 64;
	}
	engine_on_log(g.env.engine, ev_now(g.env.loop), &end);
}

static void on_conn_free(void *arg)
{
	(void)arg;
	if (g.stopping && g.env.nconns == 0)
		ev_break(g.env.loop, EVBREAK_ALL);
}

static void stop_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	(void)revents;
	if (g.stopping) {
		LOG_WARN("second signal: exiting now");
		ev_break(loop, EVBREAK_ALL);
		return;
	}
	g.stopping = 1;
	LOG_INFO("signal %d: stop accepting, answer what is in flight, exit", w->signum);
	listener_stop(g.listener);
	if (conn_drain_all(&g.env) == 0) {
		ev_break(loop, EVBREAK_ALL);
		return;
	}
	ev_timer_start(loop, &g.drain_timer);
}

static void drain_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)w;
	(void)revents;
	LOG_WARN("%u connections still open after %.0f s: closing them", g.env.nconns, DRAIN_TIMEOUT_S);
	ev_break(loop, EVBREAK_ALL);
}

/* SIGHUP with TLS on: new connections get the certificate and key as the
 * files are now (rotation without a restart); a file that no longer loads
 * keeps the running context. Turning TLS on or off needs a restart. */
static void keep_running_tls(struct config *nc)
{
	strcpy(nc->tls_cert, g.cfg.tls_cert);
	strcpy(nc->tls_key, g.cfg.tls_key);
	strcpy(nc->tls_client_ca, g.cfg.tls_client_ca);
}

static void reload_tls(struct config *nc)
{
	char err[512];
	SSL_CTX *ctx;

	if (!g.env.tls != !nc->tls_cert[0]) {
		LOG_WARN("reload: turning TLS on or off takes effect at the next restart");
		keep_running_tls(nc);
	}
	if (!g.env.tls)
		return;
	ctx = tls_server_ctx(nc->tls_cert, nc->tls_key, nc->tls_client_ca, err, sizeof(err));
	if (!ctx) {
		LOG_ERROR("reload: keeping the running TLS certificate: %s", err);
		keep_running_tls(nc);
		return;
	}
	/* Open connections hold their own reference to the old context. */
	SSL_CTX_free(g.env.tls);
	g.env.tls = ctx;
	LOG_INFO("TLS certificate %s reloaded", nc->tls_cert);
}

/* SIGHUP: re-read the file and argv; apply what can change in place. The
 * listener and database stay as they are (a restart changes those). */
static void reload_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	struct config nc;
	const char *file;
	int check = 0;
	char err[512];

	(void)loop;
	(void)w;
	(void)revents;
	if (build_config(&nc, g.argc, g.argv, &file, &check, err, sizeof(err)) == -1) {
		LOG_ERROR("reload refused, keeping the running configuration: %s", err);
		return;
	}
	if (strcmp(nc.listen, g.cfg.listen) != 0 || strcmp(nc.db, g.cfg.db) != 0)
		LOG_WARN("reload: listen and db changes take effect at the next restart");
	reload_tls(&nc);
	strcpy(nc.listen, g.cfg.listen);
	strcpy(nc.db, g.cfg.db);
	strcpy(nc.secret_file, g.cfg.secret_file);
	strcpy(nc.admin_listen, g.cfg.admin_listen);
	nc.db_poll_ms = g.cfg.db_poll_ms;
	g.cfg = nc;
	log_threshold = (enum log_level)log_level_parse(g.cfg.log_level);
	log_use_syslog(g.cfg.log_syslog);
	LOG_INFO("configuration reloaded (listen, db, secret_file, user, socket_group, log_socket*, admin_*, "
		 "unix_socket_mode, port_file, pid_file, purge_interval_s and db_poll_ms need a restart)");
}

int main(int argc, char **argv)
{
	char err[512], num[32], token[HTTP_TOKEN_MAX + 1];
	int check = 0, default_secret;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		}
		if (!strcmp(argv[i], "--version") || !strcmp(argv[i], "-V")) {
			printf("tokengate %s\n", TOKENGATE_VERSION);
			return 0;
		}
	}
	/* The database holds usage, key HMACs and prompts: for the agent's
	 * user alone, not even its group, which is often HAProxy's so that
	 * HAProxy reaches the sockets (they get their modes explicitly). Set
	 * before --check and the admin commands too, which may create the
	 * database. */
	umask(077);
	g.argc = argc;
	g.argv = argv;
	if (build_config(&g.cfg, argc, argv, &g.config_file, &check, err, sizeof(err)) == -1) {
		fprintf(stderr, "tokengate: configuration error: %s\n", err);
		return 2;
	}
	default_secret = g.cfg.secret_file[0] == '\0';
	resolve_paths(&g.cfg, g.config_file);
	{
		int words;

		if (admin_is_command(argc, argv, &words)) {
			return admin_run(&g.cfg, default_secret, argc, argv);
		}
	}
	if (check && priv_check_names(g.cfg.user, g.cfg.socket_group, err, sizeof(err)) == -1) {
		fprintf(stderr, "tokengate: %s\n", err);
		return 2;
	}
	if (check && g.cfg.tls_cert[0]) {
		SSL_CTX *ctx = tls_server_ctx(g.cfg.tls_cert, g.cfg.tls_key, g.cfg.tls_client_ca, err, sizeof(err));

		if (!ctx) {
			fprintf(stderr, "tokengate: %s\n", err);
			return 2;
		}
		SSL_CTX_free(ctx);
	}
	if (check) {
		if (admin_token(&g.cfg, token, sizeof(token), err, sizeof(err)) == -1) {
			fprintf(stderr, "tokengate: %s\n", err);
			return 2;
		}
		explicit_bzero(token, sizeof(token));
	}
	if (check) {
		struct store *s = NULL;
		struct engine *e = open_state(&g.cfg, default_secret, &s, err, sizeof(err));

		if (!e) {
			fprintf(stderr, "tokengate: %s\n", err);
			store_close(s, 0);
			return 2;
		}
		engine_free(e);
		store_close(s, 0);
		printf("tokengate: configuration and database %s OK\n", g.cfg.db);
		return 0;
	}
	log_threshold = (enum log_level)log_level_parse(g.cfg.log_level);
	log_use_syslog(g.cfg.log_syslog);
	signal(SIGPIPE, SIG_IGN);

#ifdef M_MMAP_THRESHOLD
	/* Large arrays (flush batches after a writer stall) in their own
	 * mappings, returned to the system when freed. A fixed threshold also
	 * stops glibc from raising it after the first such free, which would
	 * put them back on the heap, where they fragment it for good. */
	mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
	g.env.loop = ev_default_loop(EVFLAG_AUTO);
	if (!g.env.loop) {
		fprintf(stderr, "tokengate: cannot initialise libev\n");
		return 1;
	}
	g.env.cfg = &g.cfg;
	g.env.on_free = on_conn_free;
	/* Before binding: the sockets are made for that user and group. */
	if (priv_lookup(g.cfg.user, g.cfg.socket_group, &g.priv, err, sizeof(err)) == -1) {
		LOG_ERROR("%s", err);
		return 1;
	}
	/* Before dropping privileges: keys are often readable by root only. */
	if (g.cfg.tls_cert[0]) {
		g.env.tls = tls_server_ctx(g.cfg.tls_cert, g.cfg.tls_key, g.cfg.tls_client_ca, err, sizeof(err));
		if (!g.env.tls) {
			LOG_ERROR("%s", err);
			return 1;
		}
	}
	g.listener = listener_new(&g.env, g.cfg.listen, g.priv.sock_uid, g.priv.sock_gid, err, sizeof(err));
	if (!g.listener) {
		LOG_ERROR("%s", err);
		return 1;
	}
	if (g.cfg.log_socket[0]) {
		g.logsock = logsock_start(g.env.loop, g.cfg.log_socket, g.cfg.log_socket_mode, g.priv.sock_uid,
					  g.priv.sock_gid, log_line_cb, NULL, err, sizeof(err));
		if (!g.logsock) {
			LOG_ERROR("%s", err);
			return 1;
		}
	}
	/* Before dropping privileges, like the TLS key; checked even with the
	 * listener off, so that a bad file is found before it is needed. */
	if (admin_token(&g.cfg, token, sizeof(token), err, sizeof(err)) == -1) {
		LOG_ERROR("%s", err);
		return 1;
	}
	if (g.cfg.admin_listen[0]) {
		g.admin = http_start(g.env.loop, g.cfg.admin_listen, g.cfg.admin_allow_public, token, admin_cb, NULL,
				     err, sizeof(err));
		if (!g.admin) {
			LOG_ERROR("%s", err);
			return 1;
		}
		if (g.cfg.admin_port_file[0]) {
			snprintf(num, sizeof(num), "%d\n", http_port(g.admin));
			if (write_file_atomic(g.cfg.admin_port_file, num) == -1) {
				LOG_ERROR("admin_port_file %s: %s", g.cfg.admin_port_file, strerror(errno));
				return 1;
			}
		}
	}
	explicit_bzero(token, sizeof(token)); /* the listener keeps its own copy */
	/* Every socket is bound: from here on, no more privileges. */
	if (priv_drop(&g.priv, err, sizeof(err)) == -1) {
		LOG_ERROR("%s", err);
		return 1;
	}
	g.env.engine = open_state(&g.cfg, default_secret, &g.store, err, sizeof(err));
	if (!g.env.engine) {
		LOG_ERROR("%s", err);
		return 1;
	}
	{
		char now[32];
		const char *params[2] = {now, TOKENGATE_VERSION};

		daytime_iso_utc_ms((int64_t)(ev_time() * 1000.0), now, sizeof(now));
		if (store_exec_params(g.store,
				      "INSERT INTO agent_state(name, value) VALUES ('started_at', ?1), ('version', ?2) "
				      "ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
				      params, 2, NULL, err, sizeof(err)) == -1)
			LOG_WARN("db: cannot record the start: %s", err);
	}
	if (store_start(g.store, g.env.loop, g.cfg.db_poll_ms, g.cfg.purge_interval_s, on_policy, NULL) == -1)
		return 1;
	g.sources = (struct metrics_sources){&g.env, g.env.engine, g.store, ev_time(), TOKENGATE_VERSION};
	if (g.cfg.pid_file[0]) {
		snprintf(num, sizeof(num), "%ld\n", (long)getpid());
		if (write_file_atomic(g.cfg.pid_file, num) == -1)
			LOG_WARN("pid_file %s: %s", g.cfg.pid_file, strerror(errno));
	}
	if (g.cfg.port_file[0]) {
		snprintf(num, sizeof(num), "%d\n", listener_port(g.listener));
		if (write_file_atomic(g.cfg.port_file, num) == -1) {
			LOG_ERROR("port_file %s: %s", g.cfg.port_file, strerror(errno));
			return 1;
		}
	}
	ev_signal_init(&g.sigterm, stop_cb, SIGTERM);
	ev_signal_init(&g.sigint, stop_cb, SIGINT);
	ev_signal_init(&g.sighup, reload_cb, SIGHUP);
	ev_signal_start(g.env.loop, &g.sigterm);
	ev_signal_start(g.env.loop, &g.sigint);
	ev_signal_start(g.env.loop, &g.sighup);
	ev_timer_init(&g.drain_timer, drain_timeout_cb, DRAIN_TIMEOUT_S, 0.);
	ev_timer_init(&g.flush_timer, flush_cb, 0., (double)engine_policy(g.env.engine)->flush_interval_ms / 1000.0);
	ev_timer_again(g.env.loop, &g.flush_timer);
	ev_timer_init(&g.tick_timer, tick_cb, TICK_S, TICK_S);
	ev_timer_start(g.env.loop, &g.tick_timer);
	LOG_INFO("tokengate %s listening on %s (port %d%s), admin on %s (port %d), database %s", TOKENGATE_VERSION,
		 g.cfg.listen, listener_port(g.listener),
		 g.env.tls ? (g.cfg.tls_client_ca[0] ? ", TLS, client certificates required" : ", TLS") : "",
		 g.cfg.admin_listen[0] ? g.cfg.admin_listen : "none",
		 g.admin ? http_port(g.admin) : 0, g.cfg.db);

	ev_run(g.env.loop, 0);

	conn_free_all(&g.env);
	SSL_CTX_free(g.env.tls);
	listener_free(g.listener);
	http_stop(g.admin);
	logsock_stop(g.logsock);
	/* Whatever was never answered stays charged at its estimate. */
	engine_expire_all(g.env.engine, ev_now(g.env.loop));
	{
		/* A fold: a clean stop leaves daily_usage complete and the
		 * journal empty. */
		struct batch *b = engine_take_batch(g.env.engine, ev_now(g.env.loop), true);
		size_t lost;

		if (b)
			store_submit(g.store, b);
		lost = store_close(g.store, FINAL_WRITE_WAIT_MS);
		if (lost) {
			engine_free(g.env.engine);
			return 1;
		}
	}
	engine_free(g.env.engine);
	crypto_forget();
	ev_loop_destroy(g.env.loop);
	if (g.cfg.pid_file[0])
		unlink(g.cfg.pid_file);
	LOG_INFO("stopped");
	return 0;
}
