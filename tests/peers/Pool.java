// A Java 17 HttpClient pool (HTTP/1.1): ARGS[1] requests to ARGS[0], ARGS[2] ms
// apart; prints how many failed. Run with -Djdk.httpclient.keepalive.timeout=SECS to
// set the pool's own idle timeout (1200 s by default in Java 17).
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Pool {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
        HttpRequest req = HttpRequest.newBuilder(URI.create(args[0])).GET().build();
        int failed = 0;
        for (int i = 0; i < Integer.parseInt(args[1]); i++) {
            try {
                client.send(req, HttpResponse.BodyHandlers.ofString());
            } catch (java.io.IOException e) {
                failed++;
            }
            Thread.sleep(Long.parseLong(args[2]));
        }
        System.out.println(failed);
    }
}
