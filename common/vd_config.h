/* vd_config: the daemon's configuration, one table of keys with defaults and bounds.
 *
 * The INI file (parsed with libinih) and `--set section.key=value` overrides go through the
 * same table, so every key has exactly one type, default and range. Errors name the file, the
 * line and the key. Keys under kafka.consumer.* and kafka.producer.* are not checked here:
 * they are kept in order, with their line, and handed to librdkafka, whose own error text
 * reports a bad property (see daemon/vd_kafka.c). This module does no I/O beyond reading the
 * file it is given. */
#ifndef VD_CONFIG_H
#define VD_CONFIG_H

#include <stddef.h>

enum vd_log_format { VD_LOG_FORMAT_JSON = 0, VD_LOG_FORMAT_TEXT = 1 };

/* One pass-through property (kafka.consumer.* / kafka.producer.*). */
struct vd_config_prop {
    char *name;  /* librdkafka property name, e.g. "security.protocol" */
    char *value;
    char *origin; /* "FILE:LINE" or "--set", for error messages */
};

struct vd_config_props {
    struct vd_config_prop *v;
    size_t n, cap;
};

struct vd_config {
    /* [kafka] */
    char *kafka_brokers;
    char *kafka_group_id;
    char *event_source;      /* the CloudEvents source of every output */
    char *kafka_sasl_password_file; /* its first line becomes sasl.password of both clients */
    char *topic_requests;
    char *topic_volunteers;
    char *topic_responses;
    char *topic_assignments;
    char *topic_notifications;
    char *topic_deadletter;
    struct vd_config_props consumer_props;
    struct vd_config_props producer_props;
    /* [redis] */
    char *redis_host;
    int redis_port;
    char *redis_unix_socket; /* "" = use host:port */
    char *redis_password;    /* "" = no AUTH */
    char *redis_user;        /* "" = AUTH with the password only */
    char *redis_password_file; /* read by vd_config_read_secrets() into redis_password */
    int redis_db;
    char *redis_key_prefix;
    int redis_connect_timeout_ms;
    int redis_command_timeout_ms;
    int redis_request_ttl_s; /* how long a request's record is kept after its last change */
    int redis_volunteer_ttl_s; /* a volunteer record no event refreshed this long goes */
    /* [matching] */
    int radius_start_m;
    int radius_max_m;
    int candidates;
    int offer_timeout_ms;
    int max_offers;
    int schedule_lead_ms;
    int batch_window_ms;
    int max_tasks_per_day;
    int task_timeout_s;      /* a confirmed task never completed frees its volunteer after this */
    int schedule_horizon_s;  /* a not_before further ahead than this is rejected */
    int max_search_points;   /* points a widened search may visit (0: no bound) */
    int urgent_window_ms;    /* a round holding an urgent request waits at most this */
    int max_round;           /* requests in one matching round */
    int need_urgent, need_high, need_normal, need_low; /* need of each priority class */
    int need_per_decade_over_60, need_lives_alone, need_low_income, need_disability;
    int load_cost_m;         /* cost per task of the volunteer in the last 24 h */
    int continuity_bonus_m;  /* cost off for the preferred or last volunteer */
    int continuity_days;     /* how long the last volunteer of a resident is remembered */
    /* [http] */
    char *http_listen;
    char *desk_token;        /* "" = the desk is read-only */
    char *desk_token_file;   /* read by vd_config_read_secrets() into desk_token */
    char *desk_tiles;        /* a tile URL template for the desk's map, "" = none */
    /* [log] */
    int log_level; /* VD_LOG_DEBUG .. VD_LOG_ERROR, see vd_log.h */
    int log_format; /* enum vd_log_format */
    char *log_file; /* "" = stderr */
    /* [daemon] */
    int max_inflight; /* input messages held in memory before partitions are paused */
    int shutdown_timeout_ms;
    int partition_concurrency; /* inputs of one partition processed at once (distinct keys) */
};

/* Fills every field with its default. Returns 0, or -1 on allocation failure.
 * The caller owns the strings afterwards and releases them with vd_config_free(). */
int vd_config_init(struct vd_config *cfg);

/* Reads an INI file into cfg (over the defaults already there). Returns 0, or -1 with a message
 * such as "vdispatch.conf:12: matching.radius_max_m: 'x' is not an integer" in err. An
 * unknown section, an unknown key or an out-of-range value is an error. On error cfg may hold
 * some of the file's values; it can still be freed. */
int vd_config_load_file(struct vd_config *cfg, const char *path, char *err, size_t errlen);

/* Applies one "section.key=value" override (the argument of --set). Returns 0 or -1 with err. */
int vd_config_set(struct vd_config *cfg, const char *assignment, char *err, size_t errlen);

/* Reads the secrets kept in files (redis.password_file, http.desk_token_file,
 * kafka.sasl_password_file): a path is absolute or relative to $CREDENTIALS_DIRECTORY
 * (systemd's LoadCredential=); the file must not be readable by others; its first line is the
 * secret. Setting both a secret and its file is an error. Call after the file and the --set
 * overrides, before vd_config_validate(). Returns 0 or -1 with err naming the key. */
int vd_config_read_secrets(struct vd_config *cfg, char *err, size_t errlen);

/* Checks rules between keys (e.g. radius_start_m <= radius_max_m). Returns 0 or -1 with err. */
int vd_config_validate(const struct vd_config *cfg, char *err, size_t errlen);

/* Writes every key and its current value as INI to buf (for --dump-config). Returns the
 * number of bytes that would have been written, as snprintf does. redis.password and
 * pass-through properties whose name holds "password", "secret" or "jaas" are shown as "***"
 * when set, so the output is safe to log but does not round-trip those values. */
int vd_config_dump(const struct vd_config *cfg, char *buf, size_t buflen);

/* Releases what vd_config_init/load/set allocated; cfg may be reused after vd_config_init. */
void vd_config_free(struct vd_config *cfg);

#endif
