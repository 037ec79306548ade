/* How late a high-resolution waitable timer (what Rust's std::thread::sleep, and so os.rs's
 * sleep_until, uses on Windows 10 1803 and later) and
 * Sleep wake up, under Wine or on Windows: scripts/windows-check.sh runs it and BENCHMARKS.md
 * quotes it. Prints mean and worst oversleep over 20 waits per duration. Not a test: it fails only
 * if the timer cannot be made. */
#include <stdio.h>
#include <windows.h>

#ifndef CREATE_WAITABLE_TIMER_HIGH_RESOLUTION
#define CREATE_WAITABLE_TIMER_HIGH_RESOLUTION 0x2
#endif

static double now_us(void)
{
    static LARGE_INTEGER f;
    LARGE_INTEGER t;
    if (!f.QuadPart)
        QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&t);
    return (double)t.QuadPart * 1e6 / (double)f.QuadPart;
}

int main(void)
{
    HANDLE h = CreateWaitableTimerExW(NULL, NULL, CREATE_WAITABLE_TIMER_HIGH_RESOLUTION,
                                      TIMER_ALL_ACCESS);
    if (!h) {
        printf("timer-probe: no high-resolution waitable timer (error %lu)\n", GetLastError());
        return 1;
    }
    static const int waits_us[] = {100, 500, 2500};
    for (int k = 0; k < 3; k++) {
        double sum = 0, worst = 0;
        for (int i = 0; i < 20; i++) {
            LARGE_INTEGER due;
            due.QuadPart = -(LONGLONG)waits_us[k] * 10;
            double t = now_us();
            SetWaitableTimer(h, &due, 0, NULL, NULL, FALSE);
            WaitForSingleObject(h, INFINITE);
            double late = now_us() - t - waits_us[k];
            sum += late;
            worst = late > worst ? late : worst;
        }
        printf("timer-probe: timer %4d us: oversleep mean %4.0f us, worst %4.0f us\n", waits_us[k],
               sum / 20, worst);
    }
    double t = now_us();
    Sleep(1);
    printf("timer-probe: Sleep(1) took %.0f us\n", now_us() - t);
    CloseHandle(h);
    return 0;
}
