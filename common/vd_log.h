/* vd_log: leveled logging, JSON lines (default) or text, to stderr or a file.
 *
 * One macro checks the level before any formatting is done. Log IDs only: never names,
 * phone numbers, addresses or raw payloads. vd_log_reopen() is called from the loop after
 * SIGHUP so that logrotate can move the file away. */
#ifndef VD_LOG_H
#define VD_LOG_H

enum vd_log_level { VD_LOG_DEBUG = 0, VD_LOG_INFO = 1, VD_LOG_WARN = 2, VD_LOG_ERROR = 3 };

extern int vd_log_min_level;

/* Sets where and how to log. path NULL or "" = stderr. Returns 0 or -1 (errno set). */
int vd_log_open(int level, int format, const char *path);
/* Reopens the log file (no-op on stderr). Returns 0 or -1. */
int vd_log_reopen(void);
void vd_log_close(void);

/* Parses "debug|info|warn|error"; returns the level or -1. */
int vd_log_level_parse(const char *s);

void vd_log_write(int level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define vd_log(level, ...)                                                                     \
    do {                                                                                       \
        if ((level) >= vd_log_min_level) vd_log_write((level), __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
#define vd_debug(...) vd_log(VD_LOG_DEBUG, __VA_ARGS__)
#define vd_info(...) vd_log(VD_LOG_INFO, __VA_ARGS__)
#define vd_warn(...) vd_log(VD_LOG_WARN, __VA_ARGS__)
#define vd_error(...) vd_log(VD_LOG_ERROR, __VA_ARGS__)

#endif
