/* Sandbox probe: a tiny static program run inside the engine sandbox by tests/sandbox/test_inside.py.
 *
 * Each subcommand tries something an engine must (or must not) be able to do and prints one
 * "name errno" line per attempt (0 = it worked), so the test reads exact errno values instead of
 * parsing shell error messages.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/keyctl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long rc) {
    printf("%s %d\n", name, rc < 0 ? errno : 0);
    fflush(stdout);
}

static void *thread_main(void *arg) { return arg; }

static int syscalls(void) {
    /* Refused by the seccomp profile. Several of these succeed for an unprivileged process on a
     * host without the filter (unshare(0), PTRACE_TRACEME, keyctl), so EPERM proves the filter. */
    errno = 0; report("mount", mount("none", "/tmp", "tmpfs", 0, NULL));
    errno = 0; report("umount2", umount2("/tmp", MNT_DETACH));
    errno = 0; report("unshare", unshare(0));
    errno = 0; report("unshare_user", unshare(CLONE_NEWUSER));
    errno = 0; report("setns", setns(0, 0));
    errno = 0; report("ptrace", ptrace(PTRACE_TRACEME, 0, NULL, NULL));
    errno = 0; report("keyctl", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_PROCESS_KEYRING, 0));
    errno = 0; report("add_key", syscall(SYS_add_key, "user", "k", "v", 1, KEY_SPEC_PROCESS_KEYRING));
    union bpf_attr attr; memset(&attr, 0, sizeof attr);
    errno = 0; report("bpf", syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr));
    errno = 0; report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    errno = 0; report("init_module", syscall(SYS_init_module, NULL, 0, ""));
    errno = 0; report("personality_no_aslr", personality(ADDR_NO_RANDOMIZE));
    errno = 0; report("clone3", syscall(SYS_clone3, NULL, 0));
    errno = 0; report("socket_packet", socket(AF_PACKET, SOCK_RAW, 0));
    errno = 0; report("socket_alg", socket(AF_ALG, SOCK_SEQPACKET, 0));
    errno = 0; report("io_uring_setup", syscall(SYS_io_uring_setup, 1, NULL));
    /* What an engine needs keeps working. */
    errno = 0; report("socket_unix", socket(AF_UNIX, SOCK_STREAM, 0));
    errno = 0; report("socket_inet", socket(AF_INET, SOCK_STREAM, 0));
    errno = 0; report("personality_query", personality(0xffffffff));
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, thread_main, NULL);
    if (rc == 0) pthread_join(thread, NULL);
    errno = rc; report("pthread_create", rc ? -1 : 0);
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    report("fork", pid);
    return 0;
}

static int write_file(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { report(path, -1); return 0; }
    errno = 0;
    report(path, write(fd, "x", 1));
    close(fd);
    return 0;
}

static int connect_tcp(int port, char **hosts, int count) {
    for (int i = 0; i < count; i++) {
        char name[128];
        snprintf(name, sizeof name, "connect:%s", hosts[i]);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) { report(name, -1); continue; }
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
        if (inet_pton(AF_INET, hosts[i], &addr.sin_addr) != 1) { errno = EINVAL; report(name, -1); close(fd); continue; }
        errno = 0;
        report(name, connect(fd, (struct sockaddr *)&addr, sizeof addr));
        close(fd);
    }
    return 0;
}

static int open_device(const char *mode, const char *path) {
    /* "r": open read-only and show the first 8 bytes; "w": open write-only (nothing is written). */
    int reading = !strcmp(mode, "r");
    int fd = open(path, reading ? O_RDONLY : O_WRONLY);
    if (fd < 0) { printf("open:%s:%s %d\n", mode, path, errno); return 0; }
    if (!reading) { printf("open:%s:%s 0\n", mode, path); close(fd); return 0; }
    unsigned char buf[8];
    ssize_t got = read(fd, buf, sizeof buf);
    printf("open:%s:%s %d ", mode, path, got < 0 ? errno : 0);
    for (ssize_t i = 0; i < got; i++) printf("%02x", buf[i]);
    printf("\n");
    close(fd);
    return 0;
}

static int under_seccomp_filter(void) {
    FILE *status = fopen("/proc/self/status", "r");
    if (!status) return 0;
    char line[256];
    int filtered = 0;
    while (fgets(line, sizeof line, status))
        if (!strncmp(line, "Seccomp:", 8)) filtered = atoi(line + 8) == 2;
    fclose(status);
    return filtered;
}

static int hog(long mib) {
    /* Touch memory 16 MiB at a time and say how far it got; the OOM killer ends it at the limit. */
    for (long done = 16; done <= mib; done += 16) {
        char *p = mmap(NULL, 16 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { report("mmap", -1); return 1; }
        memset(p, 1, 16 << 20);
        printf("touched %ld MiB\n", done);
        fflush(stdout);
    }
    return 0;
}

static int forkbomb(long max) {
    /* Fork sleeping children until fork fails or `max` is reached; report how many and why. */
    long made = 0;
    for (; made < max; made++) {
        pid_t pid = fork();
        if (pid < 0) break;
        if (pid == 0) { pause(); _exit(0); }
    }
    printf("children %ld\n", made);
    report("fork", made < max ? -1 : 0);
    return 0;
}

int main(int argc, char **argv) {
    if (!under_seccomp_filter()) {
        /* Several probes succeed on an unconfined host (mount over /tmp, PTRACE_TRACEME, a fork
         * bomb): never run them outside a sandbox. */
        fprintf(stderr, "probe: refusing to run without a seccomp filter (outside the sandbox?)\n");
        return 3;
    }
    if (argc >= 2 && !strcmp(argv[1], "syscalls")) return syscalls();
    if (argc >= 3 && !strcmp(argv[1], "write")) { for (int i = 2; i < argc; i++) write_file(argv[i]); return 0; }
    if (argc >= 4 && !strcmp(argv[1], "connect")) return connect_tcp(atoi(argv[2]), argv + 3, argc - 3);
    if (argc == 4 && !strcmp(argv[1], "open")) return open_device(argv[2], argv[3]);
    if (argc == 3 && !strcmp(argv[1], "hog")) return hog(atol(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "forkbomb")) return forkbomb(atol(argv[2]));
    fprintf(stderr, "usage: probe syscalls | write PATH... | connect PORT HOST... | open r|w PATH"
                    " | hog MIB | forkbomb MAX\n");
    return 2;
}
