/* vd_log: leveled logging to stderr or a file, as JSON lines or text.
 *
 * The level check happens in the vd_log() macro so that disabled levels cost one compare.
 * A JSON line is {"ts":..,"level":..,"src":"file.c:12","msg":..}; the message is escaped here,
 * so callers format plain text. The file is opened in append mode and reopened on SIGHUP. */
#include "vd_log.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "vd_config.h"

int vd_log_min_level = VD_LOG_INFO;

static struct {
    int format;
    char *path;
    FILE *fp;
} logger;

static const char *level_names[] = {"debug", "info", "warn", "error"};

int vd_log_level_parse(const char *s) {
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0) return i;
    return -1;
}

int vd_log_open(int level, int format, const char *path) {
    vd_log_min_level = level;
    logger.format = format;
    vd_log_close();
    if (path && *path) {
        FILE *fp = fopen(path, "a");
        if (!fp) return -1;
        setvbuf(fp, NULL, _IOLBF, 0);
        logger.fp = fp;
        logger.path = strdup(path);
        if (!logger.path) return -1;
    }
    return 0;
}

int vd_log_reopen(void) {
    if (!logger.path || !logger.fp) return 0;
    /* librdkafka's threads may be writing through logger.fp right now: keep the FILE and swap
     * the descriptor under it (dup2 is atomic), so no writer ever sees a closed stream. */
    int fd = open(logger.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    fflush(logger.fp);
    int rc = dup2(fd, fileno(logger.fp));
    close(fd);
    return rc < 0 ? -1 : 0;
}

void vd_log_close(void) {
    if (logger.fp) fclose(logger.fp);
    logger.fp = NULL;
    free(logger.path);
    logger.path = NULL;
}

/* Appends s to out as the inside of a JSON string. */
static size_t json_escape(char *out, size_t cap, const char *s) {
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
    return o;
}

void vd_log_write(int level, const char *file, int line, const char *fmt, ...) {
    char msg[2048], esc[4200], ts[40];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03dZ", (int)(tv.tv_usec / 1000));

    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    if (level < 0 || level > 3) level = VD_LOG_ERROR;
    FILE *fp = logger.fp ? logger.fp : stderr;
    int saved = errno;
    if (logger.format == VD_LOG_FORMAT_TEXT) {
        fprintf(fp, "%s %-5s %s:%d %s\n", ts, level_names[level], base, line, msg);
    } else {
        json_escape(esc, sizeof esc, msg);
        fprintf(fp, "{\"ts\":\"%s\",\"level\":\"%s\",\"src\":\"%s:%d\",\"msg\":\"%s\"}\n", ts,
                level_names[level], base, line, esc);
    }
    errno = saved;
}
