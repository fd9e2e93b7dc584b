/* vd_desk: the coordinators' desk, a web page the daemon serves at /desk, and the city's
 * gauges for /metrics (requests to staff, pool sizes), read from Redis every 5 s.
 *
 * The page (daemon/desk/: HTML, script and style, embedded in the daemon: nothing comes from
 * a CDN) draws the city from the data itself: the requests that need a person, those being
 * matched, and the available volunteers, polled every two seconds; a configured tile URL
 * (http.desk_tiles) adds a map underneath. A coordinator picks a request, sees the nearest
 * free volunteers of its pool, and sends one: the desk publishes a vd.request.assign input
 * event, so the daemon applies it like any other input, atomically and on the record.
 *
 * Routes (GET unless noted):
 *   /desk, /desk/desk.js, /desk/desk.css   the page
 *   /desk/state            JSON: requests, volunteers (geohash scores), pool sizes, whether
 *                          actions are enabled; one Redis call (vd7_desk) per second at most,
 *                          however many desks poll
 *   /desk/near?request=RID JSON: the free volunteers nearest the request (vd7_near)
 *   POST /desk/assign      body {"request_id", "volunteer_id", "coordinator_id"},
 *                          Authorization: Bearer <http.desk_token>; 202 once Kafka has the
 *                          event, 401 without the right token, 403 when the desk is read-only
 *                          (no token configured), 400 naming the bad field, 503 while Redis
 *                          or Kafka is unavailable. */
#ifndef VD_DESK_H
#define VD_DESK_H

#include <uv.h>

struct vd_config;
struct vd_redis;
struct vd_kafka;
struct vd_http_request;
struct vd_desk;

struct vd_metrics_buf;

struct vd_desk_stats {
    uint64_t pages, states, nears, assigns, refused; /* refused: 400, 401, 403 */
};

struct vd_desk *vd_desk_new(uv_loop_t *loop, const struct vd_config *cfg, struct vd_redis *redis,
                            struct vd_kafka *kafka);
/* The HTTP route handler (see vd_http_handlers.route): 0 when req is the desk's. */
int vd_desk_route(struct vd_desk *d, struct vd_http_request *req);
/* A Kafka delivery report: 1 when opaque was one of the desk's events (then handled). */
int vd_desk_delivered(struct vd_desk *d, void *opaque);
const struct vd_desk_stats *vd_desk_stats(const struct vd_desk *d);
/* From the daemon's cron: reads the city's gauges (vd7_gauges) when the last read is 5 s old. */
void vd_desk_cron(struct vd_desk *d);
/* Appends the desk's counters and the city's gauges (absent until the first read). */
void vd_desk_metrics(const struct vd_desk *d, struct vd_metrics_buf *out);
void vd_desk_free(struct vd_desk *d);

#endif
