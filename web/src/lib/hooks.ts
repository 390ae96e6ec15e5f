import { type DependencyList, useCallback, useEffect, useRef, useState } from "react";

export type Loadable<T> =
  | { state: "loading"; data?: undefined; error?: undefined }
  | { state: "error"; data?: undefined; error: Error }
  | { state: "ready"; data: T; error?: undefined };

/**
 * Loads data for a view; `reload()` fetches again (after a change). A newer load wins over an
 * older one that finishes late.
 */
export function useLoad<T>(
  load: (signal: AbortSignal) => Promise<T>,
  deps: DependencyList,
): Loadable<T> & { reload: () => void } {
  const [value, setValue] = useState<Loadable<T>>({ state: "loading" });
  const [tick, setTick] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  useEffect(() => {
    const controller = new AbortController();
    setValue((v) => (v.state === "ready" && tick > 0 ? v : { state: "loading" }));
    loadRef.current(controller.signal).then(
      (data) => {
        if (!controller.signal.aborted) setValue({ state: "ready", data });
      },
      (error: Error) => {
        if (!controller.signal.aborted && error.name !== "AbortError") {
          setValue({ state: "error", error });
        }
      },
    );
    return () => controller.abort();
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { ...value, reload };
}
