/* main: argv -> config -> listen -> signals -> loop. Nothing else. */
#include <ev.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "conn.h"
#include "engine.h"
#include "listener.h"
#include "log.h"

#define TOKENGATE_VERSION "0.1.0"
#define DRAIN_TIMEOUT_S 5.0

static struct {
	int argc;
	char **argv;
	const char *config_file;
	struct config cfg;
	struct conn_env env;
	struct listener *listener;
	int stopping;
	ev_signal sigterm, sigint, sighup;
	ev_timer drain_timer;
} g;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: tokengate [--config FILE] [--listen ADDR] [--db PATH] [--KEY VALUE ...]\n"
		"       tokengate --check [--config FILE] [...]\n"
		"       tokengate --help | --version\n\n"
		"A HAProxy SPOE agent enforcing per-user daily LLM token budgets.\n\n"
		"  --config FILE          read settings from FILE (key = value lines)\n"
		"  --check                validate the configuration and exit (0 if valid)\n"
		"  --help, --version\n\n"
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
	for (int i = 1; i < argc; i++) {
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
	strcpy(nc.listen, g.cfg.listen);
	strcpy(nc.db, g.cfg.db);
	g.cfg = nc;
	log_threshold = (enum log_level)log_level_parse(g.cfg.log_level);
	LOG_INFO("configuration reloaded");
}

int main(int argc, char **argv)
{
	char err[512], num[32];
	int check = 0;

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
	g.argc = argc;
	g.argv = argv;
	if (build_config(&g.cfg, argc, argv, &g.config_file, &check, err, sizeof(err)) == -1) {
		fprintf(stderr, "tokengate: configuration error: %s\n", err);
		return 2;
	}
	if (check) {
		printf("tokengate: configuration OK\n");
		return 0;
	}
	log_threshold = (enum log_level)log_level_parse(g.cfg.log_level);
	log_use_syslog(g.cfg.log_syslog);
	signal(SIGPIPE, SIG_IGN);

	g.env.loop = ev_default_loop(EVFLAG_AUTO);
	if (!g.env.loop) {
		fprintf(stderr, "tokengate: cannot initialise libev\n");
		return 1;
	}
	g.env.cfg = &g.cfg;
	g.env.on_free = on_conn_free;
	g.env.engine = engine_new(&g.cfg);
	if (!g.env.engine) {
		fprintf(stderr, "tokengate: out of memory\n");
		return 1;
	}
	g.listener = listener_new(&g.env, g.cfg.listen, err, sizeof(err));
	if (!g.listener) {
		LOG_ERROR("%s", err);
		return 1;
	}
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
	LOG_INFO("tokengate %s listening on %s (port %d), default backend %s", TOKENGATE_VERSION,
		 g.cfg.listen, listener_port(g.listener), g.cfg.default_backend);

	ev_run(g.env.loop, 0);

	conn_free_all(&g.env);
	listener_free(g.listener);
	engine_free(g.env.engine);
	ev_loop_destroy(g.env.loop);
	if (g.cfg.pid_file[0])
		unlink(g.cfg.pid_file);
	LOG_INFO("stopped");
	return 0;
}
